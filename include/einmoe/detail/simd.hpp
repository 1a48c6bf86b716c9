// einmoe/detail/simd.hpp - the few elementwise loops of the expert kernels,
// fast whatever flags the program was compiled with.
//
// Each kernel has a portable version and an AVX-512 version compiled with a
// function-level target attribute (no -m flags needed); the CPU is asked once
// at run time which one to use. EINMOE_SIMD=generic in the environment forces
// the portable versions (for tests and comparisons).
//
// The portable and AVX-512 versions of the conversions and of quantization
// give bitwise the same results (IEEE operations, round-to-nearest-even).
// The AVX-512 activations use polynomial approximations (relative error below
// 2e-7 for silu and gelu_tanh, absolute below 3e-7 for gelu); they are used
// only where einmoe computes an activation itself (the int8 path).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "einmoe/core/dim.hpp"
#include "einmoe/kernels/activation.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define EINMOE_SIMD_X86 1
#include <immintrin.h>
#endif

namespace einmoe::detail::simd {

enum class Isa { generic, avx512, avx512_bf16 };

/// The ISA of the elementwise kernels on this CPU (asked once).
inline Isa isa() {
  static const Isa value = [] {
    const char* env = std::getenv("EINMOE_SIMD");
    if (env && std::string(env) == "generic") return Isa::generic;
#if defined(EINMOE_SIMD_X86)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
      return __builtin_cpu_supports("avx512bf16") ? Isa::avx512_bf16 : Isa::avx512;
#endif
    return Isa::generic;
  }();
  return value;
}

inline const char* isa_name() {
  switch (isa()) {
    case Isa::avx512_bf16: return "avx512+bf16";
    case Isa::avx512: return "avx512";
    default: return "generic";
  }
}

// ---- portable versions --------------------------------------------------------

namespace generic {

inline std::uint16_t bf16_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

inline void to_bf16(const float* x, index_t n, std::uint16_t* y) {
  for (index_t i = 0; i < n; ++i) y[i] = bf16_bits(x[i]);
}

inline void from_bf16(const std::uint16_t* x, index_t n, float* y) {
  for (index_t i = 0; i < n; ++i) {
    const std::uint32_t u = static_cast<std::uint32_t>(x[i]) << 16;
    std::memcpy(y + i, &u, sizeof u);
  }
}

inline float max_abs(const float* x, index_t n) {
  float m = 0.f;
  for (index_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

inline void quantize_u8(const float* x, index_t n, float inv, std::uint8_t* q) {
  for (index_t i = 0; i < n; ++i) {
    const float r = std::nearbyint(x[i] * inv);
    const int v = static_cast<int>(std::min(127.f, std::max(-127.f, r)));
    q[i] = static_cast<std::uint8_t>(v + 128);
  }
}

inline void dequantize(const std::int32_t* acc, index_t n, const std::int32_t* comp, float row_scale,
                       const float* col_scale, const float* bias, float* y) {
  for (index_t i = 0; i < n; ++i) {
    const float d = static_cast<float>(acc[i] - (comp ? comp[i] : 0));
    const float s = row_scale * col_scale[i];
    y[i] = bias ? std::fma(d, s, bias[i]) : d * s;
  }
}

inline void activate(Activation a, float* x, index_t n) { apply_activation(a, x, n); }

inline void multiply(float* x, const float* y, index_t n) {
  for (index_t i = 0; i < n; ++i) x[i] *= y[i];
}

}  // namespace generic

// ---- AVX-512 versions -------------------------------------------------------------

#if defined(EINMOE_SIMD_X86)
// gcc 12 reports -Wmaybe-uninitialized from inside its own AVX-512 intrinsic
// headers (their _mm512_undefined_* self-initializations) once they are
// inlined here; the warning is about gcc's headers, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define EINMOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace avx512 {

EINMOE_AVX512 inline __mmask16 tail_mask(index_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
}

EINMOE_AVX512 inline __m512i bf16_round(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  r = _mm512_srli_epi32(r, 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_mask_mov_epi32(r, nan, quiet);
}

EINMOE_AVX512 inline void to_bf16(const float* x, index_t n, std::uint16_t* y) {
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm256_mask_storeu_epi16(y + i, m, _mm512_maskz_cvtepi32_epi16(static_cast<__mmask16>(0xffff), bf16_round(v)));
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void to_bf16_native(const float* x, index_t n,
                                                                                           std::uint16_t* y) {
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m256bh h = _mm512_cvtneps_pbh(v);
    __m256i hi;
    std::memcpy(&hi, &h, sizeof hi);
    _mm256_mask_storeu_epi16(y + i, m, hi);
  }
}

EINMOE_AVX512 inline void from_bf16(const std::uint16_t* x, index_t n, float* y) {
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, x + i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
}

EINMOE_AVX512 inline float max_abs(const float* x, index_t n) {
  __m512 m = _mm512_setzero_ps();
  for (index_t i = 0; i < n; i += 16)
    m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i)));
  // (not _mm512_reduce_max_ps: gcc 12 warns -Wuninitialized inside it)
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, m);
  float r = lanes[0];
  for (int i = 1; i < 16; ++i) r = std::max(r, lanes[i]);
  return r;
}

EINMOE_AVX512 inline void quantize_u8(const float* x, index_t n, float inv, std::uint8_t* q) {
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(128);
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv);
    __m512i r = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(r, lo), hi), off);
    _mm_mask_storeu_epi8(q + i, m, _mm512_maskz_cvtepi32_epi8(static_cast<__mmask16>(0xffff), r));
  }
}

EINMOE_AVX512 inline void dequantize(const std::int32_t* acc, index_t n, const std::int32_t* comp, float row_scale,
                                     const float* col_scale, const float* bias, float* y) {
  const __m512 rs = _mm512_set1_ps(row_scale);
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    __m512i a = _mm512_maskz_loadu_epi32(m, acc + i);
    if (comp) a = _mm512_sub_epi32(a, _mm512_maskz_loadu_epi32(m, comp + i));
    const __m512 d = _mm512_cvtepi32_ps(a), sc = _mm512_mul_ps(rs, _mm512_maskz_loadu_ps(m, col_scale + i));
    // an explicit fma: a mul and an add could be contracted in one inlining and not another
    const __m512 v = bias ? _mm512_fmadd_ps(d, sc, _mm512_maskz_loadu_ps(m, bias + i)) : _mm512_mul_ps(d, sc);
    _mm512_mask_storeu_ps(y + i, m, v);
  }
}

// exp(x) for float: Cody-Waite range reduction and Cephes' degree-6 polynomial
// (about 1 ulp), scaled by 2^n with vscalefps; saturates to 0 and +inf.
EINMOE_AVX512 inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-103.97f)), _mm512_set1_ps(88.73f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// x * sigmoid(k * x); NaN in, NaN out.
EINMOE_AVX512 inline __m512 x_sigmoid(__m512 x, __m512 kx) {
  const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), kx));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e));
}

// gelu with erf: 0.5 x (1 + erf(x / sqrt 2)); erf from Abramowitz & Stegun
// 7.1.26 (absolute error below 1.5e-7).
EINMOE_AVX512 inline __m512 gelu_erf(__m512 x) {
  const __m512 z = _mm512_abs_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
  const __m512 t =
      _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), z, _mm512_set1_ps(1.f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z)));
  __m512 erf_abs = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.f));
  // erf is odd: take x's sign
  const __m512 sign = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN)));
  const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(erf_abs), _mm512_castps_si512(sign)));
  const __m512 g = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.f), erf));
  return _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

EINMOE_AVX512 inline void activate(Activation a, float* x, index_t n) {
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    __m512 r;
    switch (a) {
      case Activation::relu: {
        // NaN propagates (as in TF and PyTorch): only negatives become 0
        r = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps());
        break;
      }
      case Activation::silu: r = x_sigmoid(v, v); break;
      case Activation::gelu_tanh: {
        // 0.5 x (1 + tanh(y)) = x sigmoid(2y), y = sqrt(2/pi) (x + 0.044715 x^3)
        const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
        const __m512 y =
            _mm512_mul_ps(_mm512_set1_ps(0.79788456080286536f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, v));
        r = x_sigmoid(v, _mm512_add_ps(y, y));
        break;
      }
      default: r = gelu_erf(v); break;
    }
    _mm512_mask_storeu_ps(x + i, m, r);
  }
}

EINMOE_AVX512 inline void multiply(float* x, const float* y, index_t n) {
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

}  // namespace avx512
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#undef EINMOE_AVX512
#define EINMOE_SIMD_DISPATCH(call) (isa() == Isa::generic ? generic::call : avx512::call)
#else
#define EINMOE_SIMD_DISPATCH(call) generic::call
#endif

// ---- dispatch ---------------------------------------------------------------------

/// y[i] = bfloat16 bits of x[i], rounded to nearest, ties to even.
inline void to_bf16(const float* x, index_t n, std::uint16_t* y) {
#if defined(EINMOE_SIMD_X86)
  if (isa() == Isa::avx512_bf16) return avx512::to_bf16_native(x, n, y);
#endif
  EINMOE_SIMD_DISPATCH(to_bf16(x, n, y));
}
/// y[i] = the float of bfloat16 bits x[i] (exact).
inline void from_bf16(const std::uint16_t* x, index_t n, float* y) { EINMOE_SIMD_DISPATCH(from_bf16(x, n, y)); }
/// max |x[i]| (0 for n = 0).
inline float max_abs(const float* x, index_t n) { return EINMOE_SIMD_DISPATCH(max_abs(x, n)); }
/// q[i] = clamp(round_half_even(x[i] * inv), -127, 127) + 128.
inline void quantize_u8(const float* x, index_t n, float inv, std::uint8_t* q) {
  EINMOE_SIMD_DISPATCH(quantize_u8(x, n, inv, q));
}
/// y[i] = fma(float(acc[i] - comp[i]), row_scale * col_scale[i], bias[i])
/// (or the product alone without bias); comp and bias may be null.
inline void dequantize(const std::int32_t* acc, index_t n, const std::int32_t* comp, float row_scale,
                       const float* col_scale, const float* bias, float* y) {
  EINMOE_SIMD_DISPATCH(dequantize(acc, n, comp, row_scale, col_scale, bias, y));
}
/// x[i] = act(x[i]).
inline void activate(Activation a, float* x, index_t n) { EINMOE_SIMD_DISPATCH(activate(a, x, n)); }
/// x[i] *= y[i].
inline void multiply(float* x, const float* y, index_t n) { EINMOE_SIMD_DISPATCH(multiply(x, y, n)); }

#undef EINMOE_SIMD_DISPATCH

/// Quantizes one row symmetrically: q = x / scale rounded (stored + 128),
/// scale = max |x| / 127 (0 for an all-zero row). Returns the scale.
inline float quantize_row_u8(const float* x, index_t n, std::uint8_t* q) {
  const float amax = max_abs(x, n);
  if (!(amax > 0.f)) {
    std::memset(q, 128, static_cast<std::size_t>(n));
    return 0.f;
  }
  quantize_u8(x, n, 127.f / amax, q);
  return amax / 127.f;
}

}  // namespace einmoe::detail::simd
