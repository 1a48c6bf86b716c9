// einmoe/detail/ffn_train.hpp - the expert FFN of a training step: a forward
// pass over an expert's rows that keeps what the backward pass needs (the
// pre-activations and the outputs), and that backward pass.
//
// Weights are plain row-major matrices in the layer's type T (the layer's
// own copy, see training/tape.hpp): wi, wi_gate [E][model, hidden], wo
// [E][hidden, model], bi, bi_gate [E][hidden], bo [E][model]. Every product
// is one single-threaded GEMM (gemm_rm) whose sizes depend only on the routing
// (an expert's rows, a fixed block of them), never on the thread count, so
// the results are bitwise the same on any number of threads. Every buffer
// a product writes is 64-byte aligned (Eigen's small products peel by the
// destination's alignment, which would otherwise make the bits depend on
// where malloc put it).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <vector>

#include "einmoe/core/checked.hpp"
#include "einmoe/detail/ffn_gemm.hpp"
#include "einmoe/detail/ffn_scratch.hpp"
#include "einmoe/kernels/activation.hpp"

#if defined(EINMOE_HAS_DNNL)
#include <oneapi/dnnl/dnnl.h>
#endif

namespace einmoe::detail {

/// C [m, n] = op(A) op(B) (add: C += it), row-major, op(A) [m, k] and op(B)
/// [k, n] (ta / tb: A / B stored transposed), single-threaded (callers run
/// it under SingleThread or in parallel_items). oneDNN's sgemm for float when
/// `dnnl`, else Eigen; either way the bits depend only on the sizes.
template <class T>
void gemm_rm(bool ta, bool tb, index_t m, index_t n, index_t k, const T* A, const T* B, bool add, T* C, bool dnnl) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!add) std::fill(C, C + m * n, T(0));
    return;
  }
#if defined(EINMOE_HAS_DNNL)
  if constexpr (std::is_same<T, float>::value) {
    if (dnnl) {
      const dnnl_status_t st =
          dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.f, A, ta ? m : k, B, tb ? k : n, add ? 1.f : 0.f, C, n);
      if (st != dnnl_success) raise<value_error>("gemm_rm: oneDNN's sgemm failed (status ", int(st), ")");
      return;
    }
  }
#endif
  (void)dnnl;
  const CMapR<T> a(A, ta ? k : m, ta ? m : k), b(B, tb ? n : k, tb ? k : n);
  MMapR<T> c(C, m, n);
  auto go = [&](const auto& x, const auto& y) {
    if (add) c.noalias() += x * y;
    else c.noalias() = x * y;
  };
  if (ta && tb) go(a.transpose(), b.transpose());
  else if (ta) go(a.transpose(), b);
  else if (tb) go(a, b.transpose());
  else go(a, b);
}

/// An FFN bank in plain row-major layout (pointers into the layer's copy).
template <class T>
struct PlainFfn {
  index_t E = 0, M = 0, H = 0;
  Activation activation = Activation::relu;
  const T *wi = nullptr, *wo = nullptr, *wi_gate = nullptr;  // [E][M, H], [E][H, M], [E][M, H]
  const T *bi = nullptr, *bi_gate = nullptr, *bo = nullptr;  // [E][H], [E][H], [E][M] (or null)
  /// bf16 precision (float only): the weights hold bf16 values, and every
  /// GEMM input is rounded to bf16 (the rows by the caller); accumulation,
  /// biases and gradients stay fp32.
  bool bf16 = false;
  bool dnnl = false;  ///< products on oneDNN's sgemm (float), else Eigen

  bool gated() const { return wi_gate != nullptr; }
  const T* up(index_t e) const { return wi + e * M * H; }         // [M, H]
  const T* gate(index_t e) const { return wi_gate + e * M * H; }  // [M, H]
  const T* down(index_t e) const { return wo + e * H * M; }       // [H, M]
};

/// The gradients of one FFN bank, in the same layout (null: not wanted).
template <class T>
struct PlainFfnGrads {
  T *wi = nullptr, *wo = nullptr, *wi_gate = nullptr, *bi = nullptr, *bi_gate = nullptr, *bo = nullptr;
};

/// out[j] += sum over rows r of a[r, j], rows in order (a plain loop: an
/// Eigen reduction's order depends on where the buffers sit).
template <class T>
void add_column_sums(const T* a, index_t m, index_t n, T* out) {
  for (index_t r = 0; r < m; ++r)
    for (index_t j = 0; j < n; ++j) out[j] += a[r * n + j];
}

/// The hidden activations a [m, H] from the pre-activations (pre_u = x wi +
/// bi, pre_g = x wi_gate + bi_gate when gated), dropout applied.
template <class T>
void hidden_of(const PlainFfn<T>& f, const T* pre_u, const T* pre_g, index_t m, T* a, const HiddenDropout* drop) {
  const index_t n = m * f.H;
  std::copy(f.gated() ? pre_g : pre_u, (f.gated() ? pre_g : pre_u) + n, a);
  apply_activation(f.activation, a, n);  // (the inference kernels' function)
  if (f.gated())
    for (index_t i = 0; i < n; ++i) a[i] *= pre_u[i];
  dropout_rows(a, m, f.H, drop);
}

/// Scratch of ffn_backward_rows, one per thread; buffers only grow.
template <class T>
struct FfnBackwardScratch {
  AlignedVector<T> x, dy, a, da, du, dg, pu, pg, dyr;
  AlignedVector<std::uint16_t> bits;  // bf16 rounding
};

/// x rounded to bf16 values in place (float; the bf16 precision's GEMM
/// inputs, rounded as the inference kernels round them).
template <class T>
void round_inputs(T* x, index_t n, FfnBackwardScratch<T>& s) {
  if constexpr (std::is_same<T, float>::value) round_bf16(x, n, s.bits);
  else (void)x, (void)n, (void)s;
}

/// The first GEMMs of expert e on m rows x [m, M] (single-threaded):
/// pre_u = x wi + bi and, gated, pre_g = x wi_gate + bi_gate [m, H].
template <class T>
void ffn_pre_rows(const PlainFfn<T>& f, index_t e, const T* x, index_t m, T* pre_u, T* pre_g) {
  if (m == 0) return;
  const index_t M = f.M, H = f.H;
  gemm_rm(false, false, m, H, M, x, f.up(e), false, pre_u, f.dnnl);
  add_bias_rows(pre_u, m, H, f.bi ? f.bi + e * H : nullptr);
  if (f.gated()) {
    gemm_rm(false, false, m, H, M, x, f.gate(e), false, pre_g, f.dnnl);
    add_bias_rows(pre_g, m, H, f.bi_gate ? f.bi_gate + e * H : nullptr);
  }
}

/// Expert e on m rows x [m, M] (single-threaded; bf16: x holds bf16
/// values): keeps pre_u (and pre_g) [m, H] and writes y [m, M].
template <class T>
void ffn_train_rows(const PlainFfn<T>& f, index_t e, const T* x, index_t m, T* pre_u, T* pre_g, T* y,
                    const HiddenDropout* drop, FfnBackwardScratch<T>& s) {
  if (m == 0) return;
  const index_t M = f.M, H = f.H;
  T* a = FfnScratch<T>::get(s.a, m * H);
  ffn_pre_rows(f, e, x, m, pre_u, pre_g);
  hidden_of(f, pre_u, pre_g, m, a, drop);
  if (f.bf16) round_inputs(a, m * H, s);
  gemm_rm(false, false, m, M, H, a, f.down(e), false, y, f.dnnl);
  add_bias_rows(y, m, M, f.bo ? f.bo + e * M : nullptr);
}

/// The backward pass of expert e over its m rows (single-threaded): x [m,
/// M] its inputs, dy [m, M] the gradient of its outputs, pre_u / pre_g [m,
/// H] from the forward. Adds the weight gradients of expert e into g (each
/// a sum over the m rows in row order) and writes dx [m, M].
template <class T>
void ffn_backward_rows(const PlainFfn<T>& f, index_t e, const T* x, const T* dy, index_t m, const T* pre_u,
                       const T* pre_g, const HiddenDropout* drop, const PlainFfnGrads<T>& g, T* dx,
                       FfnBackwardScratch<T>& s) {
  if (m == 0) return;
  const index_t M = f.M, H = f.H;
  T* a = FfnScratch<T>::get(s.a, m * H);
  T* da = FfnScratch<T>::get(s.da, m * H);
  hidden_of(f, pre_u, pre_g, m, a, drop);
  const T* dyg = dy;  // the GEMMs' dy
  if (f.bf16) {
    round_inputs(a, m * H, s);
    T* r = FfnScratch<T>::get(s.dyr, m * M);
    std::copy(dy, dy + m * M, r);
    round_inputs(r, m * M, s);
    dyg = r;
  }
  // y = a wo + bo
  gemm_rm(true, false, H, M, m, a, dyg, true, g.wo + e * H * M, f.dnnl);
  if (g.bo) add_column_sums(dy, m, M, g.bo + e * M);
  gemm_rm(false, true, m, H, M, dyg, f.down(e), false, da, f.dnnl);
  dropout_rows(da, m, H, drop);  // the same mask and scale: a linear map
  // a = act(pre_g) * pre_u, or act(pre_u)
  T* du = FfnScratch<T>::get(s.du, m * H);
  T* dg = f.gated() ? FfnScratch<T>::get(s.dg, m * H) : nullptr;
  const index_t n = m * H;
  if (f.gated()) {  // du = da act(g), dg = da u act'(g)
    activation_grad_into(f.activation, pre_g, dg, n);
    std::copy(pre_g, pre_g + n, du);
    apply_activation(f.activation, du, n);
    for (index_t i = 0; i < n; ++i) {
      dg[i] *= da[i] * pre_u[i];
      du[i] *= da[i];
    }
  } else {  // du = da act'(u)
    activation_grad_into(f.activation, pre_u, du, n);
    for (index_t i = 0; i < n; ++i) du[i] *= da[i];
  }
  if (g.bi) add_column_sums(du, m, H, g.bi + e * H);
  if (g.bi_gate && f.gated()) add_column_sums(dg, m, H, g.bi_gate + e * H);
  if (f.bf16) {
    round_inputs(du, m * H, s);
    if (dg) round_inputs(dg, m * H, s);
  }
  gemm_rm(true, false, M, H, m, x, du, true, g.wi + e * M * H, f.dnnl);
  gemm_rm(false, true, m, M, H, du, f.up(e), false, dx, f.dnnl);
  if (f.gated()) {
    gemm_rm(true, false, M, H, m, x, dg, true, g.wi_gate + e * M * H, f.dnnl);
    gemm_rm(false, true, m, M, H, dg, f.gate(e), true, dx, f.dnnl);
  }
}

}  // namespace einmoe::detail
