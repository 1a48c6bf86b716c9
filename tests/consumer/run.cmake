# Installs einmoe from BUILD_DIR to a fresh prefix, then configures, builds and
# runs the consumer project against it with find_package(einmoe).
set(work "${WORK_DIR}")
file(REMOVE_RECURSE "${work}")
file(MAKE_DIRECTORY "${work}")
include("${CMAKE_CURRENT_LIST_DIR}/../../cmake/run_checked.cmake")
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${work}/prefix")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${work}/build" "-DCMAKE_PREFIX_PATH=${work}/prefix" -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build "${work}/build")
run("${work}/build/consumer" ${CONSUMER_ARGS})
message("${RUN_OUTPUT}")
