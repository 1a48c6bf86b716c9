# einmoe moe --expert-parallel under mpirun gives byte-for-byte the files of
# the single-process command. Arguments: CLI, MPIEXEC, NP, FIXTURE, WORK.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(common moe --inputs ${FIXTURE}/inputs.npy --wg ${FIXTURE}/wg.npy --wi ${FIXTURE}/wi.npy --wo ${FIXTURE}/wo.npy)
# (each variant also with another exchange: the files stay the same)
foreach(variant "top2" "topk" "top2_padded" "topk_hierarchical")
  set(exchange)
  if(variant MATCHES "^top2")
    set(args ${common} --capacity 4 --policy random --seed 3 --activation silu)
    set(files outputs.npy aux_loss.npy)
  else()
    set(args ${common} --router topk --k 2 --normalize topk --activation silu)
    set(files outputs.npy aux_loss.npy z_loss.npy)
  endif()
  if(variant MATCHES "padded")
    set(exchange --exchange padded)
  elseif(variant MATCHES "hierarchical")
    set(exchange --exchange hierarchical --ranks-per-node 1)
  endif()
  execute_process(COMMAND ${CLI} ${args} --out ${WORK}/one_${variant} RESULT_VARIABLE rc1 OUTPUT_QUIET)
  execute_process(COMMAND ${MPIEXEC} -n ${NP} --oversubscribe --bind-to none ${CLI} ${args} --expert-parallel ${exchange}
                          --out ${WORK}/ep_${variant}
                  RESULT_VARIABLE rc2 OUTPUT_VARIABLE out2 ERROR_VARIABLE err2)
  if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0)
    message(FATAL_ERROR "${variant}: einmoe failed (${rc1}, ${rc2}): ${out2} ${err2}")
  endif()
  if(NOT out2 MATCHES "expert parallel")
    message(FATAL_ERROR "${variant}: rank 0 did not report: ${out2}")
  endif()
  foreach(f ${files})
    execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/one_${variant}/${f} ${WORK}/ep_${variant}/${f}
                    RESULT_VARIABLE same)
    if(NOT same EQUAL 0)
      message(FATAL_ERROR "${variant}: ${f} differs between 1 process and ${NP} ranks")
    endif()
  endforeach()
endforeach()
# A bad flag: exit status 2 and one line (from rank 0 only).
execute_process(COMMAND ${MPIEXEC} -n ${NP} --oversubscribe --bind-to none ${CLI} ${common} --router topk --dense
                        --expert-parallel --out ${WORK}/bad
                RESULT_VARIABLE rc ERROR_VARIABLE err)
string(REGEX MATCHALL "einmoe: " lines "${err}")
list(LENGTH lines n)
if(rc EQUAL 0 OR NOT err MATCHES "--dense" OR NOT n EQUAL 1 OR EXISTS ${WORK}/bad)
  message(FATAL_ERROR "bad flag under mpirun: rc ${rc}, ${n} messages: ${err}")
endif()
# A node size that does not divide the ranks: every rank agrees, rank 0 says so.
execute_process(COMMAND ${MPIEXEC} -n ${NP} --oversubscribe --bind-to none ${CLI} ${common} --router topk
                        --expert-parallel --exchange hierarchical --ranks-per-node 5 --out ${WORK}/bad2
                RESULT_VARIABLE rc ERROR_VARIABLE err)
string(REGEX MATCHALL "einmoe: " lines "${err}")
list(LENGTH lines n)
if(NOT rc EQUAL 2 OR NOT err MATCHES "ranks_per_node 5" OR NOT n EQUAL 1 OR EXISTS ${WORK}/bad2)
  message(FATAL_ERROR "--ranks-per-node 5 under mpirun: rc ${rc}, ${n} messages: ${err}")
endif()
message(STATUS "einmoe moe --expert-parallel on ${NP} ranks: same bytes as one process")
