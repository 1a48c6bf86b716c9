// einmoe/core/bfloat16.hpp - the bfloat16 storage type.
//
// bfloat16 is the upper half of an IEEE float32: 1 sign bit, 8 exponent
// bits, 7 mantissa bits. Every modern MoE checkpoint ships its weights in it.
// einmoe uses it for storage and conversion (Tensor<bfloat16> holds checkpoint
// weights without widening them to float32); arithmetic happens in float.
//
// Example:
//   bfloat16 h(0.1f);                         // round to nearest, ties to even
//   float f = static_cast<float>(h);          // exact: 0.10009765625
//   auto w16 = to_bfloat16(w);                // Tensor<float> -> Tensor<bfloat16>
//   auto w32 = cast<float>(w16);              // and back (exact)
//
// Conversions from float and double round to nearest, ties to even (as
// PyTorch, numpy's ml_dtypes and the hardware's VCVTNEPS2BF16 do); a NaN stays
// a (quiet) NaN; values beyond bfloat16's range round to infinity. Widening to
// float is exact.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <type_traits>

#include "einmoe/core/tensor.hpp"

namespace einmoe {

struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  /// Rounds to nearest, ties to even.
  /// Never throws.
  explicit bfloat16(float f) : bits(round_from_float(f)) {}
  /// Rounds the double directly (no double rounding through float).
  /// Never throws.
  explicit bfloat16(double d) : bits(round_from_double(d)) {}
  explicit bfloat16(int i) : bfloat16(static_cast<double>(i)) {}
  explicit bfloat16(long i) : bfloat16(static_cast<double>(i)) {}
  explicit bfloat16(long long i) : bfloat16(static_cast<double>(i)) {}

  /// The bfloat16 with these bits.
  /// Never throws.
  static bfloat16 from_bits(std::uint16_t b) {
    bfloat16 h;
    h.bits = b;
    return h;
  }

  /// Exact widening.
  /// Never throws.
  explicit operator float() const {
    const std::uint32_t u = static_cast<std::uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  explicit operator double() const { return static_cast<double>(static_cast<float>(*this)); }

  friend bool operator==(bfloat16 a, bfloat16 b) { return static_cast<float>(a) == static_cast<float>(b); }
  friend bool operator!=(bfloat16 a, bfloat16 b) { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& os, bfloat16 h) { return os << static_cast<float>(h); }

  /// Round-to-nearest-even of a float to bfloat16 bits.
  /// Never throws.
  static std::uint16_t round_from_float(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // NaN, quiet
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
  }

  /// Round-to-nearest-even of a double to bfloat16 bits (rounded once, from
  /// the double itself).
  /// Never throws.
  static std::uint16_t round_from_double(double d) {
    if (std::isnan(d)) return std::signbit(d) ? 0xffc0u : 0x7fc0u;
    const double a = std::fabs(d);
    double r;
    if (a < 0x1p-126) {
      // float's (and bfloat16's) subnormal range: the quantum is 2^-133.
      r = std::nearbyint(d * 0x1p133) * 0x1p-133;
    } else {
      // Keep the top 8 significant bits (7 stored) of the double, ties to even.
      std::uint64_t u;
      std::memcpy(&u, &d, sizeof u);
      u += (std::uint64_t{1} << 44) - 1 + ((u >> 45) & 1u);
      u &= ~((std::uint64_t{1} << 45) - 1);
      std::memcpy(&r, &u, sizeof r);
    }
    if (std::fabs(r) >= 0x1p128) return std::signbit(d) ? 0xff80u : 0x7f80u;  // beyond the range: infinity
    const float f = static_cast<float>(r);                                    // exact: r has at most 8 significant bits
    std::uint32_t v;
    std::memcpy(&v, &f, sizeof v);
    return static_cast<std::uint16_t>(v >> 16);
  }
};

static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable<bfloat16>::value, "bfloat16 is two bytes");

template <>
struct is_tensor_element<bfloat16> : std::true_type {};

/// x rounded to bfloat16 (nearest, ties to even): [dims] -> [dims].
/// Throws resource_error if the tensor would not fit in memory.
template <class T>
Tensor<bfloat16> to_bfloat16(const TensorView<const T>& x) {
  static_assert(std::is_floating_point<T>::value, "to_bfloat16: float or double tensors");
  Tensor<bfloat16> out(x.shape(), uninitialized);
  const T* in = x.data();
  bfloat16* o = out.data();
  for (index_t i = 0; i < x.size(); ++i) o[i] = bfloat16(in[i]);
  return out;
}

/// x widened exactly to float or double: [dims] -> [dims].
/// Throws resource_error if the tensor would not fit in memory.
template <class T>
Tensor<T> from_bfloat16(const TensorView<const bfloat16>& x) {
  static_assert(std::is_floating_point<T>::value, "from_bfloat16: to float or double");
  Tensor<T> out(x.shape(), uninitialized);
  const bfloat16* in = x.data();
  T* o = out.data();
  for (index_t i = 0; i < x.size(); ++i) o[i] = static_cast<T>(static_cast<float>(in[i]));
  return out;
}

}  // namespace einmoe
