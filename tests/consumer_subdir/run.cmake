# Configures, builds and runs the add_subdirectory consumer.
set(work "${WORK_DIR}")
file(REMOVE_RECURSE "${work}")
include("${CMAKE_CURRENT_LIST_DIR}/../../cmake/run_checked.cmake")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${work}" -DCMAKE_BUILD_TYPE=Release "-DEINMOE_SOURCE_DIR=${EINMOE_SOURCE_DIR}")
run(${CMAKE_COMMAND} --build "${work}")
run("${work}/consumer" ${CONSUMER_ARGS})
message("${RUN_OUTPUT}")
file(REMOVE_RECURSE "${work}")
