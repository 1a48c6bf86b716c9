# Fails unless README contains SNIPPET's text verbatim.
file(READ "${README}" readme)
file(READ "${SNIPPET}" snippet)
string(FIND "${readme}" "${snippet}" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "${README} does not quote ${SNIPPET} verbatim; paste the file into its code block")
endif()
