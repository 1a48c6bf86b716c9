// einmoe/kernels/ffn.hpp - FfnKernel: the laid-out weights of a bank of
// expert feed-forward networks, for every backend and precision.
//
// Example:
//   const FfnKernel<float>& f = packed.kernel();   // laid out once (PackedExperts, experts/experts.hpp)
//   index_t E = f.experts(), M = f.model(), H = f.hidden();
//   bool glu = f.gated();                          // a gate bank: act(x . gate) * (x . up)
//
// The FFN of expert e is
//   plain:  y = act(x . up[e] + b_up[e]) . down[e] + b_down[e]
//   gated:  y = (act(x . gate[e] + b_gate[e]) * (x . up[e] + b_up[e])) . down[e] + b_down[e]
// (SwiGLU with act = silu, GeGLU with gelu / gelu_tanh; biases optional).
// detail/ffn_rows.hpp runs it on blocks of rows; each call is
// single-threaded and its result depends only on the rows, the expert and
// the row count, never on how many threads run or which one runs the call.
//
// Where the precisions round (kernels/precision.hpp has the definitions):
// bf16 rounds x and the hidden layer to bfloat16; int8 quantizes x and the
// hidden layer per row. On oneDNN the bias, activation and gate multiply of
// the first layer run inside the GEMM (post-ops); the int8 epilogue
// (dequantize, bias, activation, requantize) runs in einmoe's own vector code.
#pragma once

#include <cstddef>
#include <vector>

#include "einmoe/detail/dnnl.hpp"
#include "einmoe/kernels/activation.hpp"
#include "einmoe/kernels/matrix_bank.hpp"

namespace einmoe {

/// The laid-out weights of a bank of expert FFNs (immutable once built).
template <class T>
struct FfnKernel {
  MatrixBank<T> up;                     ///< [E][model, hidden]: the plain FFN's first layer, the GLU's linear half
  MatrixBank<T> gate;                   ///< [E][model, hidden]: the GLU's gate (empty: not gated)
  MatrixBank<T> down;                   ///< [E][hidden, model]
  std::vector<T> b_up, b_gate, b_down;  ///< [E * hidden], [E * hidden], [E * model], or empty
  Activation activation = Activation::relu;

  bool gated() const { return !gate.empty(); }
  index_t experts() const { return up.count(); }
  index_t model() const { return up.in(); }
  index_t hidden() const { return up.out(); }
  Precision precision() const { return up.precision(); }
  Backend backend() const { return up.backend(); }
  /// The most rows one kernel call takes: callers split longer runs into
  /// blocks of this many (256 on oneDNN, 512 on Eigen, which repacks
  /// weights on every call).
  /// Never throws.
  index_t row_block() const { return row_block_of(backend()); }
  static index_t row_block_of(Backend b) {
#if defined(EINMOE_HAS_DNNL)
    if (b == Backend::dnnl) return detail::dnnl_impl::kBlockRows;
#endif
    (void)b;
    return 512;
  }
  /// Bytes of weights held.
  /// Never throws.
  std::size_t bytes() const {
    return up.bytes() + gate.bytes() + down.bytes() + (b_up.size() + b_gate.size() + b_down.size()) * sizeof(T);
  }
};

}  // namespace einmoe
