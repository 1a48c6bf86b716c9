// einmoe/detail/ffn_gemm.hpp - the GEMMs and epilogues the FFN kernels are
// made of: Eigen and oneDNN products on a bank's matrix, bias and dropout
// rows, bf16 rounding, the int8 hidden-layer epilogue.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "einmoe/core/random.hpp"
#include "einmoe/detail/dnnl.hpp"
#include "einmoe/detail/ffn_scratch.hpp"
#include "einmoe/detail/simd.hpp"
#include "einmoe/kernels/ffn.hpp"

namespace einmoe {
namespace detail {

template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using CMapR = Eigen::Map<const RowMajor<T>>;
template <class T>
using MMapR = Eigen::Map<RowMajor<T>>;

template <class T>
void add_bias_rows(T* y, index_t m, index_t n, const T* b) {
  if (!b) return;
  for (index_t r = 0; r < m; ++r)
    for (index_t j = 0; j < n; ++j) y[r * n + j] += b[j];
}

template <class T>
void dropout_rows(T* h, index_t m, index_t H, const HiddenDropout* d) {
  if (!d || d->rate <= 0.0) return;
  const T scale = static_cast<T>(1.0 / (1.0 - d->rate));
  for (index_t r = 0; r < m; ++r)
    for (index_t j = 0; j < H; ++j) {
      T& v = h[r * H + j];
      v = Rng::uniform_at(d->seed, static_cast<std::uint64_t>(d->first[r] + j)) >= d->rate ? v * scale : T(0);
    }
}

/// x, or a copy of its m x k values in 64-byte aligned scratch when x is not
/// so aligned.
template <class T>
const T* aligned_rows(const T* x, index_t m, index_t k, AlignedVector<T>& scratch) {
  if (reinterpret_cast<std::uintptr_t>(x) % 64 == 0) return x;
  T* a = FfnScratch<T>::get(scratch, m * k);
  std::copy(x, x + m * k, a);
  return a;
}

/// bias pointer of expert e, or null
template <class T>
const T* bias_of(const std::vector<T>& b, index_t e, index_t n) {
  return b.empty() ? nullptr : b.data() + e * n;
}

/// Eigen: y [m, n] = x [m, k] . W where W is bank matrix e as T (fp32 banks
/// directly; bf16 banks widened into scratch). x must be 64-byte aligned; y
/// is computed in aligned scratch when it is not (Eigen's small products
/// assign outputs to packets by alignment).
template <class T>
void eigen_gemm(const MatrixBank<T>& w, index_t e, const T* x, index_t m, T* y, FfnScratch<T>& s) {
  const index_t k = w.in(), n = w.out();
  const bool direct = reinterpret_cast<std::uintptr_t>(y) % 64 == 0;
  T* out = direct ? y : FfnScratch<T>::get(s.ya, m * n);
  MMapR<T> Y(out, m, n);
  if (k == 0) {
    Y.setZero();
  } else {
    const T* wp = static_cast<const T*>(w.data(e));
    if constexpr (std::is_same<T, float>::value) {
      if (w.precision() == Precision::bf16) {
        float* wf = FfnScratch<T>::get(s.wf, k * n);
        simd::from_bf16(static_cast<const std::uint16_t*>(w.data(e)), k * n, wf);
        wp = wf;
      }
    }
    Y.noalias() = CMapR<T>(x, m, k) * CMapR<T>(wp, k, n);
  }
  if (!direct) std::copy(out, out + m * n, y);
}

/// Eigen, int8: acc [m, n] = (xq - 128) . W (exact int32).
inline void eigen_gemm_int8(const MatrixBank<float>& w, index_t e, const std::uint8_t* xq, index_t m, std::int32_t* acc,
                            AlignedVector<std::int32_t>& xi, AlignedVector<std::int32_t>& wi) {
  const index_t k = w.in(), n = w.out();
  MMapR<std::int32_t> A(acc, m, n);
  if (k == 0) {
    A.setZero();
    return;
  }
  std::int32_t* x32 = FfnScratch<float>::get(xi, m * k);
  for (index_t i = 0; i < m * k; ++i) x32[i] = static_cast<std::int32_t>(xq[i]) - 128;
  std::int32_t* w32 = FfnScratch<float>::get(wi, k * n);
  const std::int8_t* w8 = static_cast<const std::int8_t*>(w.data(e));
  for (index_t i = 0; i < k * n; ++i) w32[i] = w8[i];
  A.noalias() = CMapR<std::int32_t>(x32, m, k) * CMapR<std::int32_t>(w32, k, n);
}

/// Rounds n floats to bfloat16 and back, in place.
inline void round_bf16(float* x, index_t n, AlignedVector<std::uint16_t>& tmp) {
  std::uint16_t* b = FfnScratch<float>::get(tmp, n);
  simd::to_bf16(x, n, b);
  simd::from_bf16(b, n, x);
}

#if defined(EINMOE_HAS_DNNL)
/// One oneDNN matmul on bank matrix e.
template <class T>
void dnnl_gemm(const MatrixBank<T>& w, index_t e, dnnl_impl::Type src, const void* x, index_t m, dnnl_impl::Type dst,
               void* y, const type_identity_t<T>* bias, int act, const float* mul, FfnScratch<T>& s) {
  using dnnl_impl::Type;
  const Type wt = w.precision() == Precision::fp32   ? Type::f32
                  : w.precision() == Precision::bf16 ? Type::bf16
                                                     : Type::s8;
  dnnl_impl::MatmulKey key{m, w.in(), w.out(), src, wt, dst, bias != nullptr, act, mul != nullptr, !w.packed()};
  const auto mm = dnnl_impl::matmul(key);
  void* pad = FfnScratch<T>::get(s.pad, static_cast<index_t>(mm->scratch));
  dnnl_impl::execute(*mm, x, w.data(e), y, reinterpret_cast<const float*>(bias), mul, pad);
}
#endif

/// int8 epilogue of the first layer: h = act(deq(acc_up)) or
/// act(deq(acc_gate)) * deq(acc_up), then quantized per row into hq / hs.
inline void int8_hidden(const FfnKernel<float>& f, index_t e, index_t m, FfnScratch<float>& s) {
  const index_t H = f.hidden();
  float* h = FfnScratch<float>::get(s.h, m * H);
  float* u = f.gated() ? FfnScratch<float>::get(s.u, m * H) : nullptr;
  std::uint8_t* hq = FfnScratch<float>::get(s.hq, m * H);
  float* hs = FfnScratch<float>::get(s.hs, m);
  for (index_t r = 0; r < m; ++r) {
    float* hr = h + r * H;
    if (f.gated()) {
      simd::dequantize(s.acc2.data() + r * H, H, f.gate.compensation(e), s.xs[detail::uz(r)], f.gate.scales(e),
                       bias_of(f.b_gate, e, H), hr);
      simd::activate(f.activation, hr, H);
      float* ur = u + r * H;
      simd::dequantize(s.acc.data() + r * H, H, f.up.compensation(e), s.xs[detail::uz(r)], f.up.scales(e),
                       bias_of(f.b_up, e, H), ur);
      simd::multiply(hr, ur, H);
    } else {
      simd::dequantize(s.acc.data() + r * H, H, f.up.compensation(e), s.xs[detail::uz(r)], f.up.scales(e),
                       bias_of(f.b_up, e, H), hr);
      simd::activate(f.activation, hr, H);
    }
    hs[r] = simd::quantize_row_u8(hr, H, hq + r * H);
  }
}

}  // namespace detail
}  // namespace einmoe
