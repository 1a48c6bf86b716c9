// The test binary compiles einmoe's GEMM kernels once, here; the other test
// files see them as extern templates (EINMOE_EXTERN_GEMM, set in CMake).
#include "einmoe/detail/gemm.hpp"

EINMOE_INSTANTIATE_GEMM(float);
EINMOE_INSTANTIATE_GEMM(double);
