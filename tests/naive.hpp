// tests/naive.hpp - slow, obviously-correct reference implementations and
// random inputs for property tests. Everything here works on named
// multi-indices (std::map name -> index), independent of einmoe's strided
// loops, so the two implementations share no code.
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "einmoe/einmoe.hpp"

namespace naive {

using einmoe::Dim;
using einmoe::index_t;
using einmoe::Shape;
using einmoe::Tensor;
using Index = std::map<std::string, index_t>;

/// Calls f for every multi-index of s, in row-major order.
inline void for_each(const Shape& s, const std::function<void(const Index&)>& f) {
  if (s.num_elements() == 0) return;
  std::vector<index_t> ctr(static_cast<std::size_t>(s.rank()), 0);
  for (;;) {
    Index idx;
    for (index_t i = 0; i < s.rank(); ++i) idx[s[i].name] = ctr[static_cast<std::size_t>(i)];
    f(idx);
    index_t d = s.rank();
    for (;;) {
      if (d == 0) return;
      --d;
      if (++ctr[static_cast<std::size_t>(d)] < s[d].size) break;
      ctr[static_cast<std::size_t>(d)] = 0;
    }
  }
}

/// Row-major offset of a (possibly larger) named index within s.
inline index_t offset(const Shape& s, const Index& idx) {
  index_t off = 0;
  for (const auto& d : s) off = off * d.size + idx.at(d.name);
  return off;
}

template <class T>
T get(const einmoe::TensorView<const T>& t, const Index& idx) {
  return t[offset(t.shape(), idx)];
}

/// Random engine shared by the property tests (fixed seed: reproducible).
inline std::mt19937_64& rng() {
  static std::mt19937_64 g(12345);
  return g;
}

/// A random shape of rank in [min_rank, max_rank] over names drawn from
/// `pool` (in random order), sizes in [0, max_size] (0 and 1 common).
inline Shape random_shape(int min_rank, int max_rank,
                          const std::vector<std::string>& pool = {"a", "b", "c", "d", "e", "f"}, index_t max_size = 4,
                          bool allow_zero = true) {
  auto& g = rng();
  std::uniform_int_distribution<int> rk(min_rank, max_rank);
  std::vector<std::string> names = pool;
  std::shuffle(names.begin(), names.end(), g);
  const int r = rk(g);
  std::vector<Dim> dims;
  std::uniform_int_distribution<index_t> sz(allow_zero ? 0 : 1, max_size);
  for (int i = 0; i < r; ++i) dims.emplace_back(names[static_cast<std::size_t>(i)], sz(g));
  return Shape(dims);
}

/// Fixed sizes per name, so that random shapes over the same names agree.
inline Shape random_shape_with_sizes(const std::map<std::string, index_t>& sizes, int min_rank, int max_rank) {
  auto& g = rng();
  std::vector<std::string> names;
  for (const auto& kv : sizes) names.push_back(kv.first);
  std::shuffle(names.begin(), names.end(), g);
  std::uniform_int_distribution<int> rk(min_rank, std::min<int>(max_rank, static_cast<int>(names.size())));
  const int r = rk(g);
  std::vector<Dim> dims;
  for (int i = 0; i < r; ++i)
    dims.emplace_back(names[static_cast<std::size_t>(i)], sizes.at(names[static_cast<std::size_t>(i)]));
  return Shape(dims);
}

template <class T>
Tensor<T> random_tensor(const Shape& s, double lo = -2.0, double hi = 2.0) {
  Tensor<T> t(s);
  std::uniform_real_distribution<double> u(lo, hi);
  for (auto& v : t) v = static_cast<T>(u(rng()));
  return t;
}

template <class T>
Tensor<T> random_ints(const Shape& s, index_t lo, index_t hi) {
  Tensor<T> t(s);
  std::uniform_int_distribution<index_t> u(lo, hi);
  for (auto& v : t) v = static_cast<T>(u(rng()));
  return t;
}

/// Naive einsum: loops over every combination of all dims.
template <class T>
Tensor<T> einsum(const std::vector<const einmoe::TensorView<const T>*>& xs, const Shape& out) {
  std::vector<Dim> all;
  auto add = [&](const Shape& s) {
    for (const auto& d : s) {
      bool seen = false;
      for (const auto& e : all) seen = seen || e.name == d.name;
      if (!seen) all.push_back(d);
    }
  };
  for (const auto* x : xs) add(x->shape());
  add(out);
  Tensor<T> r(out);
  for_each(Shape(all), [&](const Index& idx) {
    T p = T(1);
    for (const auto* x : xs) p = static_cast<T>(p * get(*x, idx));
    r[offset(out, idx)] += p;
  });
  return r;
}

/// Reference mixture of experts, t2t style: SparseDispatcher dispatch, each
/// expert relu(x . wi[e]) . wo[e] written with einsum on its rows, combine.
/// gates [batch, experts]; x [batch, model]; wi [experts, model, hidden].
inline Tensor<double> dispatcher_ffn(const einmoe::TensorView<const double>& gates,
                                     const einmoe::TensorView<const double>& x,
                                     const einmoe::ExpertWeights<double>& w) {
  einmoe::SparseDispatcher<double> d(gates);
  const auto parts = d.dispatch(x);
  const index_t E = w.wi.size_of("experts");
  std::vector<Tensor<double>> outs;
  for (index_t e = 0; e < E; ++e) {
    const auto wi = einmoe::reshape(einmoe::slice(w.wi, "experts", e, 1), w.wi.shape().without({"experts"}));
    const auto wo = einmoe::reshape(einmoe::slice(w.wo, "experts", e, 1), w.wo.shape().without({"experts"}));
    outs.push_back(einmoe::einsum({einmoe::relu(einmoe::einsum({parts[static_cast<std::size_t>(e)], wi})), wo}));
  }
  return d.combine(outs);
}

/// Relative-or-absolute closeness for property tests.
template <class T>
bool close(T a, T b, double rtol, double atol = 1e-12) {
  if (std::isnan(static_cast<double>(a)) || std::isnan(static_cast<double>(b)))
    return std::isnan(static_cast<double>(a)) && std::isnan(static_cast<double>(b));
  if (std::isinf(static_cast<double>(a)) || std::isinf(static_cast<double>(b))) return a == b;
  return std::abs(static_cast<double>(a) - static_cast<double>(b)) <=
         atol + rtol * std::max(std::abs(static_cast<double>(a)), std::abs(static_cast<double>(b)));
}

/// Same shape and all elements close.
template <class T>
bool all_close(const einmoe::TensorView<const T>& a, const einmoe::TensorView<const T>& b, double rtol,
               double atol = 1e-12) {
  if (a.shape() != b.shape()) return false;
  for (index_t i = 0; i < a.size(); ++i)
    if (!close(a[i], b[i], rtol, atol)) return false;
  return true;
}

}  // namespace naive
