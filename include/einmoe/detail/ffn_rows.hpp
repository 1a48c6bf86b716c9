// einmoe/detail/ffn_rows.hpp - an expert FFN on a block of rows (ffn_rows),
// and a plain linear layer on one (linear_rows, the router's logits): the
// single-threaded kernel calls the experts and layers are made of. Each
// caller thread brings its own FfnScratch; a call takes at most
// f.row_block() rows, and its result depends only on the rows, the expert
// and the row count.
#pragma once

#include "einmoe/detail/ffn_decode.hpp"
#include "einmoe/detail/ffn_gemm.hpp"
#include "einmoe/detail/ffn_scratch.hpp"

namespace einmoe::detail {

template <class T>
void check_rows(const FfnKernel<T>& f, index_t e, index_t m, const char* op) {
  if (e < 0 || e >= f.experts()) raise<value_error>(op, ": expert ", e, " of ", f.experts());
  if (m < 0 || m > f.row_block()) raise<value_error>(op, ": ", m, " rows in one call (at most ", f.row_block(), ")");
}

/// The int8 FFN: quantize the rows, one int32 GEMM per projection, then
/// einmoe's own epilogue (the same on both backends; Eigen multiplies the
/// signed rows, oneDNN the rows + 128 and subtracts the compensation).
inline void ffn_rows_int8(const FfnKernel<float>& f, index_t e, const float* x, index_t m, float* y,
                          FfnScratch<float>& s, bool dnnl) {
  const index_t M = f.model(), H = f.hidden();
  auto gemm = [&](const MatrixBank<float>& w, const std::uint8_t* q, std::int32_t* acc) {
#if defined(EINMOE_HAS_DNNL)
    if (dnnl) {
      using dnnl_impl::Type;
      return dnnl_gemm(w, e, Type::u8, q, m, Type::s32, acc, nullptr, -1, nullptr, s);
    }
#endif
    (void)dnnl;
    eigen_gemm_int8(w, e, q, m, acc, s.xi, s.wi);
  };
  std::uint8_t* xq = FfnScratch<float>::get(s.xq, m * M);
  float* xs = FfnScratch<float>::get(s.xs, m);
  for (index_t r = 0; r < m; ++r) xs[r] = simd::quantize_row_u8(x + r * M, M, xq + r * M);
  gemm(f.up, xq, FfnScratch<float>::get(s.acc, m * std::max(H, M)));
  if (f.gated()) gemm(f.gate, xq, FfnScratch<float>::get(s.acc2, m * H));
  int8_hidden(f, e, m, s);
  gemm(f.down, s.hq.data(), s.acc.data());
  const float* b_down = bias_of(f.b_down, e, M);
  for (index_t r = 0; r < m; ++r)
    simd::dequantize(s.acc.data() + r * M, M, f.down.compensation(e), s.hs[uz(r)], f.down.scales(e), b_down, y + r * M);
}

#if defined(EINMOE_HAS_DNNL)
/// The fp32 / bf16 FFN on oneDNN: bias, activation and the gate multiply run
/// inside the first GEMM (post-ops).
inline void ffn_rows_dnnl(const FfnKernel<float>& f, index_t e, const float* x, index_t m, float* y,
                          FfnScratch<float>& s, const HiddenDropout* dropout) {
  using dnnl_impl::Type;
  const index_t M = f.model(), H = f.hidden();
  const int act = static_cast<int>(f.activation);
  const bool bf16 = f.precision() == Precision::bf16;
  const Type in = bf16 ? Type::bf16 : Type::f32;
  const void* xin = x;
  if (bf16) {
    std::uint16_t* xb = FfnScratch<float>::get(s.xb, m * M);
    simd::to_bf16(x, m * M, xb);
    xin = xb;
  }
  void* h = bf16 ? static_cast<void*>(FfnScratch<float>::get(s.hb, m * H)) : FfnScratch<float>::get(s.h, m * H);
  if (f.gated()) {
    float* u = FfnScratch<float>::get(s.u, m * H);
    dnnl_gemm(f.up, e, in, xin, m, Type::f32, u, bias_of(f.b_up, e, H), -1, nullptr, s);
    dnnl_gemm(f.gate, e, in, xin, m, in, h, bias_of(f.b_gate, e, H), act, u, s);
  } else {
    dnnl_gemm(f.up, e, in, xin, m, in, h, bias_of(f.b_up, e, H), act, nullptr, s);
  }
  if (!bf16) dropout_rows(static_cast<float*>(h), m, H, dropout);
  dnnl_gemm(f.down, e, in, h, m, Type::f32, y, bias_of(f.b_down, e, M), -1, nullptr, s);
}
#endif

/// The fp32 / bf16 FFN on Eigen (and oneDNN's degenerate sizes).
template <class T>
void ffn_rows_eigen(const FfnKernel<T>& f, index_t e, const T* x, index_t m, T* y, FfnScratch<T>& s,
                    const HiddenDropout* dropout) {
  const index_t M = f.model(), H = f.hidden();
  const bool bf16 = f.precision() == Precision::bf16;
  const T* xin = x;
  if constexpr (std::is_same<T, float>::value) {
    if (bf16) {
      float* xr = FfnScratch<T>::get(s.wf2, m * M);  // the rows rounded to bf16
      std::copy(x, x + m * M, xr);
      round_bf16(xr, m * M, s.xb);
      xin = xr;
    }
  }
  T* h = FfnScratch<T>::get(s.h, m * H);
  eigen_gemm(f.up, e, xin, m, h, s);
  add_bias_rows(h, m, H, bias_of(f.b_up, e, H));
  if (f.gated()) {
    T* u = FfnScratch<T>::get(s.u, m * H);
    std::copy(h, h + m * H, u);
    eigen_gemm(f.gate, e, xin, m, h, s);
    add_bias_rows(h, m, H, bias_of(f.b_gate, e, H));
    apply_activation(f.activation, h, m * H);
    for (index_t i = 0; i < m * H; ++i) h[i] *= u[i];
  } else {
    apply_activation(f.activation, h, m * H);
  }
  dropout_rows(h, m, H, dropout);
  if constexpr (std::is_same<T, float>::value)
    if (bf16) round_bf16(h, m * H, s.hb);
  eigen_gemm(f.down, e, h, m, y, s);
  add_bias_rows(y, m, M, bias_of(f.b_down, e, M));
}

/// y [m, model] = FFN_e(x [m, model]) for m <= f.row_block() rows
/// (row-major, contiguous), single-threaded. `dropout` (fp32 only) drops
/// hidden elements as HiddenDropout says.
template <class T>
void ffn_rows(const FfnKernel<T>& f, index_t e, const T* x, index_t m, T* y, FfnScratch<T>& s,
              const HiddenDropout* dropout = nullptr) {
  check_rows(f, e, m, "ffn_rows");
  if (m == 0) return;
  x = aligned_rows(x, m, f.model(), s.xa);
  const bool drops = dropout && dropout->rate > 0.0;
  if (drops && f.precision() != Precision::fp32) raise<value_error>("ffn_rows: dropout runs in fp32 precision only");
  [[maybe_unused]] SingleThread one;
#if defined(EINMOE_HAS_DNNL)
  const bool dnnl = f.backend() == Backend::dnnl && f.model() > 0 && f.hidden() > 0;
#else
  const bool dnnl = false;
#endif
  if constexpr (std::is_same<T, float>::value) {
#if defined(EINMOE_HAS_DNNL)
    if (dnnl && !drops && decode_path(f, m)) return ffn_decode(f, e, x, m, y, s);
#endif
    if (f.precision() == Precision::int8) return ffn_rows_int8(f, e, x, m, y, s, dnnl);
#if defined(EINMOE_HAS_DNNL)
    if (dnnl) return ffn_rows_dnnl(f, e, x, m, y, s, dropout);
#endif
  }
  (void)dnnl;
  ffn_rows_eigen(f, e, x, m, y, s, dropout);
}

/// y [m, out] = x [m, in] . W[e] for m <= FfnKernel::row_block_of(w.backend())
/// rows, single-threaded, fp32 precision (the router's logits).
template <class T>
void linear_rows(const MatrixBank<T>& w, index_t e, const T* x, index_t m, T* y, FfnScratch<T>& s) {
  if (w.precision() != Precision::fp32) detail::raise<value_error>("linear_rows: fp32 banks only");
  if (m > FfnKernel<T>::row_block_of(w.backend()))
    detail::raise<value_error>("linear_rows: ", m, " rows in one call (at most ",
                               FfnKernel<T>::row_block_of(w.backend()), ")");
  if (m == 0) return;
  [[maybe_unused]] detail::SingleThread one;
  x = detail::aligned_rows(x, m, w.in(), s.xa);
#if defined(EINMOE_HAS_DNNL)
  if constexpr (std::is_same<T, float>::value) {
    if (w.backend() == Backend::dnnl && w.in() > 0 && w.out() > 0) {
      using detail::dnnl_impl::Type;
      detail::dnnl_gemm(w, e, Type::f32, x, m, Type::f32, y, nullptr, -1, nullptr, s);
      return;
    }
  }
#endif
  detail::eigen_gemm(w, e, x, m, y, s);
}

}  // namespace einmoe::detail
