# Configures einmoe in a fresh build directory, builds nothing, and installs
# it: the headers and the package config must install, and the einmoe
# command (not built) is skipped, not an error.
set(work "${WORK_DIR}")
file(REMOVE_RECURSE "${work}")
file(MAKE_DIRECTORY "${work}")
include("${CMAKE_CURRENT_LIST_DIR}/../../cmake/run_checked.cmake")
# (xtensor off too: only core/xtensor_interop.hpp needs it, so the package
# must not ask consumers for it)
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${work}/build" -DCMAKE_BUILD_TYPE=Release
    -DEINMOE_BUILD_TESTS=OFF -DEINMOE_BUILD_BENCHMARKS=OFF -DEINMOE_XTENSOR=OFF)
run(${CMAKE_COMMAND} --install "${work}/build" --prefix "${work}/prefix")
foreach(f include/einmoe/einmoe.hpp include/einmoe/moe/moe_layer.hpp share/cmake/einmoe/einmoeConfig.cmake
          share/cmake/einmoe/einmoeTargets.cmake)
  if(NOT EXISTS "${work}/prefix/${f}")
    message(FATAL_ERROR "install from an unbuilt tree: ${f} is missing")
  endif()
endforeach()
file(READ "${work}/prefix/share/cmake/einmoe/einmoeConfig.cmake" config)
if(NOT config MATCHES "if\\(OFF\\)\n  find_dependency\\(xtensor")
  message(FATAL_ERROR "install without xtensor: the package config still requires xtensor")
endif()
file(READ "${work}/prefix/share/cmake/einmoe/einmoeTargets.cmake" targets)
if(targets MATCHES "xtensor")
  message(FATAL_ERROR "install without xtensor: the einmoe target still links xtensor")
endif()
if(EXISTS "${work}/prefix/bin/einmoe")
  message(FATAL_ERROR "install from an unbuilt tree: bin/einmoe should not exist")
endif()
file(REMOVE_RECURSE "${work}")
message("installed from an unbuilt tree")
