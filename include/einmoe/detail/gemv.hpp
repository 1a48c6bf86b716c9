// einmoe/detail/gemv.hpp - the decode path: a few rows times packed weights,
// streaming the weights once at the memory's speed.
//
// At decode time an expert sees 1-4 rows, and its time is the time to read
// its weights from memory. These kernels read oneDNN's packed weight layout
// directly: a matrix [K, N] is N/64 panels, each a contiguous run of
// 256-byte steps, a step being g consecutive k values for 64 columns
// (g = 1 for fp32, 2 for bf16 pairs, 4 for int8 quads: the layouts oneDNN
// names BA16a64b, BA16a64b2a and BA16a64b4a). One pass over each panel with
// 4 accumulators per row, one to four panels at a time; no software prefetch (the hardware prefetcher does
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
template <Kind K, int M, int NP>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma"))) void panels_kernel(
    const void* x, index_t ldx, index_t steps, const char* wp, index_t p0, index_t gap, void* y, index_t ldy) {
  // Panels p0, p0 + gap, ..., p0 + (NP - 1) gap at once: NP concurrent
  // weight streams keep more of the memory's bandwidth busy than one (every
  // loop below is unrolled, so the accumulators live in registers at any
  // optimization level).
  __m512 f[M][NP * 4];
  __m512i s[M][NP * 4];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < NP * 4; ++j) f[r][j] = _mm512_setzero_ps(), s[r][j] = _mm512_setzero_si512();
  const index_t stride = steps * 256;
  const char* q = wp + p0 * stride;
  for (index_t t = 0; t < steps; ++t, q += 256) {
    // the rows' values at step t, broadcast (one fp32, two bf16 or four u8)
    __m512i xv[M];
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      std::int32_t v;
      std::memcpy(&v,
                  static_cast<const char*>(x) + (r * ldx + t * group(K)) * (K == Kind::f32    ? 4
                                                                            : K == Kind::bf16 ? 2
                                                                                              : 1),
                  4);
      xv[r] = _mm512_set1_epi32(v);
    }
    // one weight vector at a time, into every row's accumulator
#pragma GCC unroll 16
    for (int j = 0; j < NP * 4; ++j) {
      const __m512i w = _mm512_load_si512(q + (j / 4) * gap * stride + (j % 4) * 64);
#pragma GCC unroll 4
      for (int r = 0; r < M; ++r) {
        if constexpr (K == Kind::f32) {
          f[r][j] = _mm512_fmadd_ps(_mm512_castsi512_ps(xv[r]), _mm512_castsi512_ps(w), f[r][j]);
        } else if constexpr (K == Kind::bf16) {
          __m512bh xb, b;
          std::memcpy(&xb, &xv[r], 64), std::memcpy(&b, &w, 64);
          f[r][j] = _mm512_dpbf16_ps(f[r][j], xb, b);
        } else {
          s[r][j] = _mm512_dpbusd_epi32(s[r][j], xv[r], w);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < NP * 4; ++j) {
      const index_t col = (p0 + (j / 4) * gap) * 64 + (j % 4) * 16;
      if constexpr (K == Kind::u8) _mm512_storeu_si512(static_cast<std::int32_t*>(y) + r * ldy + col, s[r][j]);
      else _mm512_storeu_ps(static_cast<float*>(y) + r * ldy + col, f[r][j]);
    }
}

/// y[r, n] (fp32, or int32 for u8) for r < M, n < panels * 64, with row
/// strides ldx (elements of x, one per k) and ldy; x rows are padded with
/// zeros to steps * g values. Each output column's sum runs over k in the
/// same order whichever panels are grouped, so results do not depend on
/// the grouping.
template <Kind K, int M>
void kernel(const void* x, index_t ldx, index_t steps, const void* w, index_t panels, void* y, index_t ldy) {
  constexpr int NP = M == 1 ? 4 : M == 2 ? 3 : M == 3 ? 2 : 1;  // at most 24 accumulators
  const char* wp = static_cast<const char*>(w);
  // Stream j walks the j-th of NP equal runs of panels, so each stream is
  // long and contiguous (the prefetcher's best case); leftovers one by one.
  const index_t run = panels / NP;
  for (index_t i = 0; i < run; ++i) panels_kernel<K, M, NP>(x, ldx, steps, wp, i, run, y, ldy);
  for (index_t p = run * NP; p < panels; ++p) panels_kernel<K, M, 1>(x, ldx, steps, wp, p, 1, y, ldy);
}

template <Kind K>
void run_kind(const void* x, index_t m, index_t ldx, index_t steps, const void* w, index_t panels, void* y,
              index_t ldy) {
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
