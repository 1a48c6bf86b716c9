// einmoe/kernels/precision.hpp - what the expert kernels compute in, and on
// which backend.
//
// Example:
//   MoEOptions opt;
//   opt.precision = Precision::bf16;     // weights stored in bf16, fp32 accumulation
//   opt.backend = Backend::automatic;    // oneDNN when einmoe was built with it, else Eigen
//
// Precision is the precision of the expert *weights* (and of the activations
// fed to the expert GEMMs). Gating, softmax, routing decisions and the
// combine always run in the layer's float type, so routing never changes
// with the expert precision.
//
// - fp32: weights in the layer's float type (float; a Tensor<double> layer
//   computes in double, on Eigen).
// - bf16: weights stored as bfloat16; each routed row is rounded to bfloat16
//   (nearest, ties to even) before the GEMM; products accumulate in fp32; the
//   hidden layer is rounded to bfloat16 again before the second GEMM;
//   outputs are fp32. Without AVX512_BF16 it still runs (oneDNN's emulation,
//   or Eigen on fp32 copies of the weights): slower, same rounding points.
// - int8: symmetric int8 weights with one fp32 scale per output channel
//   (scale = max |W[:, n]| / 127), and activations quantized dynamically,
//   one symmetric scale per row (per token: scale = max |x| / 127, values
//   rounded to nearest, ties to even). Products accumulate exactly in int32;
//   y = acc * (row scale * channel scale) (+ bias) in fp32. Both GEMMs of an
//   expert do this; the hidden layer is quantized per row after its
//   activation.
#pragma once

#include <string>

#include "einmoe/core/error.hpp"

namespace einmoe {

/// The precision of expert weights (see the file comment).
enum class Precision { fp32, bf16, int8 };

/// Which GEMM library runs the expert kernels.
enum class Backend {
  automatic,  ///< oneDNN when einmoe was built with it (EINMOE_DNNL), else Eigen
  dnnl,       ///< oneDNN: JIT kernels for the CPU it runs on, whatever the compile flags
  eigen,      ///< Eigen: portable, compiled for the flags the program was built with
};

inline const char* to_string(Precision p) {
  switch (p) {
    case Precision::fp32: return "fp32";
    case Precision::bf16: return "bf16";
    default: return "int8";
  }
}
inline Precision parse_precision(const std::string& s) {
  for (auto p : {Precision::fp32, Precision::bf16, Precision::int8})
    if (s == to_string(p)) return p;
  detail::raise<value_error>("unknown precision \"", s, "\" (fp32, bf16, int8)");
}

inline const char* to_string(Backend b) {
  switch (b) {
    case Backend::automatic: return "automatic";
    case Backend::dnnl: return "dnnl";
    default: return "eigen";
  }
}
inline Backend parse_backend(const std::string& s) {
  for (auto b : {Backend::automatic, Backend::dnnl, Backend::eigen})
    if (s == to_string(b)) return b;
  detail::raise<value_error>("unknown backend \"", s, "\" (automatic, dnnl, eigen)");
}

/// True when einmoe was built with oneDNN (the einmoe target's EINMOE_DNNL).
/// Never throws.
constexpr bool has_dnnl() {
#if defined(EINMOE_HAS_DNNL)
  return true;
#else
  return false;
#endif
}

/// The backend `b` resolves to in this build: automatic -> dnnl when built
/// with it, else eigen. Asking for dnnl in a build without it is a value_error.
inline Backend resolve_backend(Backend b) {
  if (b == Backend::automatic) return has_dnnl() ? Backend::dnnl : Backend::eigen;
  if (b == Backend::dnnl && !has_dnnl())
    detail::raise<value_error>("backend dnnl: einmoe was built without oneDNN (EINMOE_DNNL=OFF or not found)");
  return b;
}

}  // namespace einmoe
