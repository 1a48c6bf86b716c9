// benchmarks/portable_layer.hpp - the reference layer compiled the way most
// users build einmoe: `cmake -DCMAKE_BUILD_TYPE=Release`, no -march flags.
//
// It lives in a shared library with hidden symbols (portable_layer.cpp), so
// its copies of einmoe's inline functions, compiled for baseline x86-64,
// never merge with the suite's copies, compiled with -march=native. The
// suite times both in the same run (BM_MoELayer vs BM_MoELayerPortable).
#pragma once

#if defined(__GNUC__)
#define EINMOE_BENCH_EXPORT __attribute__((visibility("default")))
#else
#define EINMOE_BENCH_EXPORT
#endif

namespace bench_portable {

/// Builds the reference layer (same seed and weights as the suite's) in
/// expert precision `precision` (0 fp32, 1 bf16, 2 int8).
EINMOE_BENCH_EXPORT void prepare(int precision);
/// One forward of the prepared layer on the reference inputs; returns the
/// routed rows (for the GFLOP count).
EINMOE_BENCH_EXPORT long forward(int precision);
/// Largest |y_portable - y_native| / max |y_native| over the reference
/// outputs, given the suite's outputs (to show both builds compute the same).
EINMOE_BENCH_EXPORT double max_rel_difference(int precision, const float* native_outputs, long n);
/// The flags this library was compiled with (for the label).
EINMOE_BENCH_EXPORT const char* compiled_isa();

}  // namespace bench_portable
