# Builds the harnesses with clang++ and runs each for SECONDS seconds, starting
# from the committed seed corpus (fuzz/corpus/<harness without fuzz_>). New
# inputs go to a scratch corpus in WORK_DIR, never into the source tree; a
# crash fails the test and leaves its input in WORK_DIR/artifacts.
set(work "${WORK_DIR}")
file(MAKE_DIRECTORY "${work}/artifacts")
include("${CMAKE_CURRENT_LIST_DIR}/../cmake/run_checked.cmake")
run(${CMAKE_COMMAND} -S "${EINMOE_SOURCE_DIR}/fuzz" -B "${work}/build" -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_CXX_COMPILER=${CLANGXX}" "-DEINMOE_SOURCE_DIR=${EINMOE_SOURCE_DIR}")
run(${CMAKE_COMMAND} --build "${work}/build" --parallel 2)
file(GLOB harnesses "${work}/build/fuzz_*")
foreach(h IN LISTS harnesses)
  if(IS_DIRECTORY "${h}")
    continue()
  endif()
  get_filename_component(name "${h}" NAME)
  string(REPLACE "fuzz_" "" seeds "${name}")
  file(MAKE_DIRECTORY "${work}/corpus/${seeds}")
  run("${h}" -max_total_time=${SECONDS} -rss_limit_mb=4096 -timeout=20 -print_final_stats=1
      "-artifact_prefix=${work}/artifacts/${name}-" "${work}/corpus/${seeds}" "${EINMOE_SOURCE_DIR}/fuzz/corpus/${seeds}")
  message("${name}: ${SECONDS} s without a finding")
endforeach()
