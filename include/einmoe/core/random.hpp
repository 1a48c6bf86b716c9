// einmoe/core/random.hpp - reproducible random numbers.
//
// Every random choice in einmoe (second-expert policies, noisy gating,
// dropout) takes either explicit draws or an Rng with a seed, so results are
// reproducible and testable. Rng is splitmix64: small, fast, and the same on
// every platform (unlike std:: distributions, whose output the standard
// leaves to the implementation).
//
// Example:
//   Rng rng(42);
//   auto u = rng.uniform<float>(Shape::parse("batch:2,group:8"));   // [0, 1)
//   auto g = rng.gumbel<double>(logits.shape());                      // -log(-log(u))
//
// Tensors are filled in row-major order, one draw per element.
#pragma once

#include <cmath>
#include <cstdint>

#include "einmoe/core/tensor.hpp"

namespace einmoe {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}

  /// Skips n draws of 64 bits (uniform, uniform_open and gumbel take one
  /// each, normal two): Rng(seed) skipped by n continues exactly where n
  /// draws would have left it, without making them.
  /// Never throws.
  void skip(std::uint64_t n) { state_ += n * 0x9E3779B97F4A7C15ull; }

  /// The next 64 random bits.
  /// Never throws.
  std::uint64_t next_u64() { return mix(state_ += 0x9E3779B97F4A7C15ull); }

  /// Uniform in [0, 1), 53 random bits.
  /// Never throws.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  /// Uniform in (0, 1): never 0, so log(u) is finite.
  /// Never throws.
  double uniform_open() { return (static_cast<double>(next_u64() >> 11) + 0.5) * 0x1.0p-53; }
  /// Standard Gumbel: -log(-log(u)).
  /// Never throws.
  double gumbel() { return -std::log(-std::log(uniform_open())); }
  /// Standard normal (Box-Muller; one draw per call, the cosine branch).
  /// Never throws.
  double normal() {
    const double u1 = uniform_open(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
  }

  /// Tensors of draws, filled in row-major order: [s] -> Tensor<T> [s].
  /// uniform in [0, 1); gumbel -log(-log(u)); normal N(0, 1).
  /// Throws resource_error if the tensor would not fit in memory.
  template <class T>
  Tensor<T> uniform(const Shape& s) {
    return fill<T>(s, [this] { return uniform(); });
  }
  template <class T>
  Tensor<T> gumbel(const Shape& s) {
    return fill<T>(s, [this] { return gumbel(); });
  }
  template <class T>
  Tensor<T> normal(const Shape& s) {
    return fill<T>(s, [this] { return normal(); });
  }

  /// A stateless uniform in [0, 1) for (seed, index): element `index` of a
  /// stream, computable in any order (used where two code paths must draw
  /// the same number for the same element, e.g. dropout).
  /// Never throws.
  static double uniform_at(std::uint64_t seed, std::uint64_t index) {
    return static_cast<double>(mix(seed ^ mix(index + 0x9E3779B97F4A7C15ull)) >> 11) * 0x1.0p-53;
  }

  /// The seed of call n (0, 1, 2, ...) of a layer built with `seed`. Call 0
  /// uses `seed` itself, so a layer's first call draws exactly what the
  /// stateless functions draw from that seed; every later call draws fresh
  /// numbers, reproducibly: call n of any layer with this seed draws what a
  /// stateless call with seed call_seed(seed, n) draws.
  /// Never throws.
  static std::uint64_t call_seed(std::uint64_t seed, std::uint64_t n) {
    return n == 0 ? seed : mix(seed ^ mix(n ^ 0xD1B54A32D192ED03ull));
  }

  /// splitmix64's finalizer: a bijection on 64-bit words.
  /// Never throws.
  static std::uint64_t mix(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

 private:
  template <class T, class F>
  Tensor<T> fill(const Shape& s, F&& draw) {
    Tensor<T> t(s, uninitialized);
    for (auto& v : t) v = static_cast<T>(draw());
    return t;
  }
  std::uint64_t state_;
};

}  // namespace einmoe
