# Builds the Doxygen API reference and fails on any Doxygen warning (a
# documented name that does not exist, markup Doxygen cannot read).
execute_process(COMMAND ${CMAKE_COMMAND} --build "${BUILD_DIR}" --target docs RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "docs: the build failed\n${out}\n${err}")
endif()
file(READ "${BUILD_DIR}/doxygen-warnings.txt" warnings)
if(NOT warnings STREQUAL "")
  message(FATAL_ERROR "docs: Doxygen warnings:\n${warnings}")
endif()
message("docs: ${BUILD_DIR}/html/index.html, no warnings")
