// The test programs compile einmoe's GEMM kernels once, here, with the code
// docs/building.md gives for it (its EINMOE_INSTANTIATE_GEMM block, extracted into
// doc_examples.inc); the other files see them as extern templates
// (EINMOE_EXTERN_GEMM, set in CMake).
#define EINMOE_EXAMPLE_docs_building_1
#include "doc_examples.inc"
