# run(<command> <args>...): runs a command from a cmake -P script, failing
# with its output (the last 6000 bytes of stderr) when it exits non-zero.
# Shared by the CTest scripts (consumers, install, fuzzing).
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(LENGTH "${err}" n)
    if(n GREATER 6000)
      math(EXPR from "${n} - 6000")
      string(SUBSTRING "${err}" ${from} 6000 err)
    endif()
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(RUN_OUTPUT "${out}" PARENT_SCOPE)
endfunction()
