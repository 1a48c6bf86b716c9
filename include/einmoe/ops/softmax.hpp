// einmoe/ops/softmax.hpp - softmax, log_softmax and logsumexp along a dim.
//
// Example:
//   auto p = softmax(logits, "experts");     // [group, experts] -> [group, experts]
//   auto l = logsumexp(logits, "experts");   // [group, experts] -> [group]
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

/// The max of n strided values, NaN if any is NaN.
template <class T>
T row_max(const T* x, index_t n, index_t stride) {
  T m = -std::numeric_limits<T>::infinity();
  for (index_t i = 0; i < n; ++i) {
    const T v = x[i * stride];
    if (v > m || v != v) m = v;
    if (m != m) break;
  }
  return m;
}

/// Softmax (or log-softmax) of one strided row. Shared by the softmax op and
/// MoE gating so that both give bit-identical gates. x == y (in place) is
/// fine: each element is read before it is written.
template <class T>
void softmax_row(const T* x, T* y, index_t n, index_t stride, SoftmaxKind kind = SoftmaxKind::prob) {
  T m = row_max(x, n, stride);
  if (m == -std::numeric_limits<T>::infinity()) m = T(0);
  T sum = 0;
  for (index_t i = 0; i < n; ++i) {
    const T e = std::exp(x[i * stride] - m);
    if (kind == SoftmaxKind::prob) y[i * stride] = e;
    sum += e;
  }
  if (kind == SoftmaxKind::prob) {
    const T inv = T(1) / sum;
    for (index_t i = 0; i < n; ++i) y[i * stride] *= inv;
  } else {
    const T lse = m + std::log(sum);
    for (index_t i = 0; i < n; ++i) y[i * stride] = x[i * stride] - lse;
  }
}

template <class T>
Tensor<T> softmax_impl(const TensorView<const T>& x, const std::string& dim, SoftmaxKind kind, const char* op) {
  static_assert(std::is_floating_point<T>::value, "softmax: needs a floating-point tensor");
  const AxisSplit ax(x.shape(), dim, op);
  Tensor<T> out(x.shape(), uninitialized);
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t k = 0; k < ax.inner; ++k)
      softmax_row(x.data() + ax.at(o, 0, k), out.data() + ax.at(o, 0, k), ax.n, ax.inner, kind);
  return out;
}

}  // namespace detail

/// exp(x) / sum(exp(x)) along `dim`: [x.shape] -> [x.shape].
/// Throws shape_error if x lacks `dim`.
template <class T>
Tensor<T> softmax(const TensorView<const T>& x, const std::string& dim) {
  return detail::softmax_impl(x, dim, detail::SoftmaxKind::prob, "softmax");
}

/// x - logsumexp(x) along `dim`: [x.shape] -> [x.shape].
/// Throws shape_error if x lacks `dim`.
template <class T>
Tensor<T> log_softmax(const TensorView<const T>& x, const std::string& dim) {
  return detail::softmax_impl(x, dim, detail::SoftmaxKind::log_prob, "log_softmax");
}

/// log(sum(exp(x))) along `dim`: [x.shape] -> [x.shape without dim].
/// Throws shape_error if x lacks `dim`.
template <class T>
Tensor<T> logsumexp(const TensorView<const T>& x, const std::string& dim) {
  static_assert(std::is_floating_point<T>::value, "logsumexp: needs a floating-point tensor");
  const detail::AxisSplit ax(x.shape(), dim, "logsumexp");
  Tensor<T> out(x.shape().without({dim}), uninitialized);
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t k = 0; k < ax.inner; ++k) {
      const T* xi = x.data() + ax.at(o, 0, k);
      const T m = detail::row_max(xi, ax.n, ax.inner);
      const T shift = m == -std::numeric_limits<T>::infinity() ? T(0) : m;
      T sum = 0;
      for (index_t i = 0; i < ax.n; ++i) sum += std::exp(xi[i * ax.inner] - shift);
      out[o * ax.inner + k] = shift + std::log(sum);
    }
  return out;
}

}  // namespace einmoe
