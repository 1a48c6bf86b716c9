// einmoe/ops/softmax.hpp - softmax, log_softmax and logsumexp along a dim.
//
//   softmax(logits, "experts")       // [group, experts] -> [group, experts]
//   logsumexp(logits, "experts")     // [group, experts] -> [group]
//
// All three subtract the running max first, so large logits do not overflow.
// A row that is entirely -inf has no defined softmax: softmax gives NaN and
// logsumexp -inf there, as numpy and TF do (for attention, use the masked
// softmax in einmoe/attention, which gives zeros for fully masked rows).
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/axis.hpp"

namespace einmoe {
namespace detail {

enum class SoftmaxKind { prob, log_prob };

template <class T>
Tensor<T> softmax_impl(const Tensor<T>& x, const std::string& dim, SoftmaxKind kind, const char* op) {
  static_assert(std::is_floating_point<T>::value, "softmax: needs a floating-point tensor");
  const AxisSplit ax(x.shape(), dim, op);
  Tensor<T> out(x.shape(), uninitialized);
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t k = 0; k < ax.inner; ++k) {
      const T* xi = x.data() + ax.at(o, 0, k);
      T* yi = out.data() + ax.at(o, 0, k);
      const index_t s = ax.inner;
      T m = -std::numeric_limits<T>::infinity();
      for (index_t i = 0; i < ax.n; ++i) m = (xi[i * s] > m || xi[i * s] != xi[i * s]) ? xi[i * s] : m;
      if (m == -std::numeric_limits<T>::infinity()) m = T(0);
      T sum = 0;
      for (index_t i = 0; i < ax.n; ++i) {
        const T e = std::exp(xi[i * s] - m);
        if (kind == SoftmaxKind::prob) yi[i * s] = e;
        sum += e;
      }
      if (kind == SoftmaxKind::prob) {
        const T inv = T(1) / sum;
        for (index_t i = 0; i < ax.n; ++i) yi[i * s] *= inv;
      } else {
        const T lse = m + std::log(sum);
        for (index_t i = 0; i < ax.n; ++i) yi[i * s] = xi[i * s] - lse;
      }
    }
  return out;
}

}  // namespace detail

/// exp(x) / sum(exp(x)) along `dim`: [x.shape] -> [x.shape].
template <class T>
Tensor<T> softmax(const Tensor<T>& x, const std::string& dim) {
  return detail::softmax_impl(x, dim, detail::SoftmaxKind::prob, "softmax");
}

/// x - logsumexp(x) along `dim`: [x.shape] -> [x.shape].
template <class T>
Tensor<T> log_softmax(const Tensor<T>& x, const std::string& dim) {
  return detail::softmax_impl(x, dim, detail::SoftmaxKind::log_prob, "log_softmax");
}

/// log(sum(exp(x))) along `dim`: [x.shape] -> [x.shape without dim].
template <class T>
Tensor<T> logsumexp(const Tensor<T>& x, const std::string& dim) {
  static_assert(std::is_floating_point<T>::value, "logsumexp: needs a floating-point tensor");
  const detail::AxisSplit ax(x.shape(), dim, "logsumexp");
  Tensor<T> out(x.shape().without({dim}), uninitialized);
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t k = 0; k < ax.inner; ++k) {
      const T* xi = x.data() + ax.at(o, 0, k);
      T m = -std::numeric_limits<T>::infinity();
      for (index_t i = 0; i < ax.n; ++i) m = (xi[i * ax.inner] > m || xi[i * ax.inner] != xi[i * ax.inner]) ? xi[i * ax.inner] : m;
      const T shift = m == -std::numeric_limits<T>::infinity() ? T(0) : m;
      T sum = 0;
      for (index_t i = 0; i < ax.n; ++i) sum += std::exp(xi[i * ax.inner] - shift);
      out[o * ax.inner + k] = shift + std::log(sum);
    }
  return out;
}

}  // namespace einmoe
