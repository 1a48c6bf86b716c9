// einmoe/detail/gemv.hpp - the decode path: a few rows times packed weights,
// streaming the weights once at the memory's speed.
//
// At decode time an expert sees 1-4 rows, and its time is the time to read
// its weights from memory. These kernels read oneDNN's packed weight layout
// directly: a matrix [K, N] is N/64 panels, each a contiguous run of
// 256-byte steps, a step being g consecutive k values for 64 columns
// (g = 1 for fp32, 2 for bf16 pairs, 4 for int8 quads: the layouts oneDNN
// names BA16a64b, BA16a64b2a and BA16a64b4a). One pass over each panel with
// 4 accumulators per row; no software prefetch (the hardware prefetcher does
// better on this stream). AVX-512 only (bf16 needs AVX512_BF16, int8 VNNI);
// elsewhere the caller uses oneDNN's kernels.
#pragma once

#include <cstdint>
#include <cstring>

#include "einmoe/core/dim.hpp"
#include "einmoe/detail/simd.hpp"

namespace einmoe::detail::gemv {

/// The most rows the decode kernels take.
inline constexpr index_t kMaxRows = 4;

enum class Kind { f32, bf16, u8 };

/// k values per step (the packed layout's innermost block).
inline index_t group(Kind k) { return k == Kind::f32 ? 1 : k == Kind::bf16 ? 2 : 4; }

/// Whether this CPU runs the kernel for `k`.
inline bool supported(Kind k) {
#if defined(EINMOE_SIMD_X86)
  static const bool f32 = simd::isa() != simd::Isa::generic;
  static const bool bf16 = simd::isa() == simd::Isa::avx512_bf16;
  static const bool u8 = f32 && __builtin_cpu_supports("avx512vnni");
  return k == Kind::f32 ? f32 : k == Kind::bf16 ? bf16 : u8;
#else
  (void)k;
  return false;
#endif
}

// (see simd.hpp: gcc 12's intrinsic headers warn maybe-uninitialized)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(EINMOE_SIMD_X86)
/// y[r, n] (fp32, or int32 for u8) for r < M, n < panels * 64, with row
/// strides ldx (elements of x, one per k) and ldy; x rows are padded with
/// zeros to steps * g values.
template <Kind K, int M>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma"))) void kernel(
    const void* x, index_t ldx, index_t steps, const void* w, index_t panels, void* y, index_t ldy) {
  const char* wp = static_cast<const char*>(w);
  for (index_t p = 0; p < panels; ++p) {
    // (every loop over rows and accumulators is unrolled, so the
    // accumulators live in registers at any optimization level)
    __m512 f[M][4];
    __m512i s[M][4];
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) f[r][j] = _mm512_setzero_ps(), s[r][j] = _mm512_setzero_si512();
    const char* q = wp + p * steps * 256;
    for (index_t t = 0; t < steps; ++t, q += 256) {
      const __m512i w0 = _mm512_load_si512(q), w1 = _mm512_load_si512(q + 64), w2 = _mm512_load_si512(q + 128),
                    w3 = _mm512_load_si512(q + 192);
#pragma GCC unroll 4
      for (int r = 0; r < M; ++r) {
        if constexpr (K == Kind::f32) {
          const __m512 xv = _mm512_set1_ps(static_cast<const float*>(x)[r * ldx + t]);
          f[r][0] = _mm512_fmadd_ps(xv, _mm512_castsi512_ps(w0), f[r][0]);
          f[r][1] = _mm512_fmadd_ps(xv, _mm512_castsi512_ps(w1), f[r][1]);
          f[r][2] = _mm512_fmadd_ps(xv, _mm512_castsi512_ps(w2), f[r][2]);
          f[r][3] = _mm512_fmadd_ps(xv, _mm512_castsi512_ps(w3), f[r][3]);
        } else {
          std::int32_t v;  // two bf16 or four u8 values of row r at step t
          std::memcpy(&v, static_cast<const char*>(x) + (r * ldx + t * group(K)) * (K == Kind::bf16 ? 2 : 1), 4);
          const __m512i xv = _mm512_set1_epi32(v);
          if constexpr (K == Kind::bf16) {
            __m512bh xb, b0, b1, b2, b3;
            std::memcpy(&xb, &xv, 64);
            std::memcpy(&b0, &w0, 64), std::memcpy(&b1, &w1, 64), std::memcpy(&b2, &w2, 64), std::memcpy(&b3, &w3, 64);
            f[r][0] = _mm512_dpbf16_ps(f[r][0], xb, b0);
            f[r][1] = _mm512_dpbf16_ps(f[r][1], xb, b1);
            f[r][2] = _mm512_dpbf16_ps(f[r][2], xb, b2);
            f[r][3] = _mm512_dpbf16_ps(f[r][3], xb, b3);
          } else {
            s[r][0] = _mm512_dpbusd_epi32(s[r][0], xv, w0);
            s[r][1] = _mm512_dpbusd_epi32(s[r][1], xv, w1);
            s[r][2] = _mm512_dpbusd_epi32(s[r][2], xv, w2);
            s[r][3] = _mm512_dpbusd_epi32(s[r][3], xv, w3);
          }
        }
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        if constexpr (K == Kind::u8)
          _mm512_storeu_si512(static_cast<std::int32_t*>(y) + r * ldy + p * 64 + j * 16, s[r][j]);
        else
          _mm512_storeu_ps(static_cast<float*>(y) + r * ldy + p * 64 + j * 16, f[r][j]);
      }
  }
}

template <Kind K>
void run_kind(const void* x, index_t m, index_t ldx, index_t steps, const void* w, index_t panels, void* y, index_t ldy) {
  switch (m) {
    case 1: return kernel<K, 1>(x, ldx, steps, w, panels, y, ldy);
    case 2: return kernel<K, 2>(x, ldx, steps, w, panels, y, ldy);
    case 3: return kernel<K, 3>(x, ldx, steps, w, panels, y, ldy);
    default: return kernel<K, 4>(x, ldx, steps, w, panels, y, ldy);
  }
}
#endif

/// y [m, panels*64] = x [m, steps*g] . W (packed), m <= kMaxRows; y is fp32
/// (int32 for u8). Requires supported(kind).
inline void run(Kind kind, const void* x, index_t m, index_t ldx, index_t steps, const void* w, index_t panels, void* y,
                index_t ldy) {
#if defined(EINMOE_SIMD_X86)
  switch (kind) {
    case Kind::f32: return run_kind<Kind::f32>(x, m, ldx, steps, w, panels, y, ldy);
    case Kind::bf16: return run_kind<Kind::bf16>(x, m, ldx, steps, w, panels, y, ldy);
    default: return run_kind<Kind::u8>(x, m, ldx, steps, w, panels, y, ldy);
  }
#else
  (void)kind, (void)x, (void)m, (void)ldx, (void)steps, (void)w, (void)panels, (void)y, (void)ldy;
#endif
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace einmoe::detail::gemv
