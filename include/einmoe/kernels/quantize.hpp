// einmoe/kernels/quantize.hpp - int8 quantization, the way einmoe's int8
// expert kernels do it.
//
// Example:
//   // w: [experts=4, model=64, hidden=128] float (or bfloat16); x [tokens, model]
//   Int8Tensor q = quantize_int8(w, "model");       // per output channel: scales [experts, hidden]
//   Tensor<float> w2 = dequantize(q, "model");      // q.values * q.scales, w's shape
//   Int8Tensor a = quantize_rows_int8(x, "model");  // activations: one scale per row, scales [tokens]
//
// Weights: symmetric, one scale per output channel, i.e. per position of
// every dim except the contracted (input) one: scale = max |w| / 127 over the
// input dim, value = round(w * 127 / max |w|) with ties to even (in
// [-127, 127]; an all-zero channel has scale 0). Activations: the same with
// one scale per row (token), computed when the rows are used ("dynamic").
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "einmoe/core/bfloat16.hpp"
#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/axis.hpp"

namespace einmoe {

/// Symmetric int8 values with their fp32 scales.
struct Int8Tensor {
  Tensor<std::int8_t> values;  ///< the quantized tensor's shape
  Tensor<float> scales;        ///< that shape without the reduced (input) dim
};

namespace detail {

template <class S>
float as_float(S v) {
  return static_cast<float>(v);
}

/// Quantizes n values read at x[i * stride] (symmetric, ties to even) into
/// q[i * qstride]; returns the scale (max |x| / 127, 0 when all are zero).
template <class S>
float quantize_strided(const S* x, index_t n, index_t stride, std::int8_t* q, index_t qstride);

/// Quantizes `cols` channels at once, channel j being x[j * cstride + i *
/// stride], i < n (the same arithmetic as quantize_strided, in an order that
/// reads rows of memory rather than columns when cstride is 1).
template <class S>
void quantize_columns(const S* x, index_t n, index_t stride, index_t cols, index_t cstride, std::int8_t* q,
                      index_t qstride, index_t qcstride, float* scales) {
  std::vector<float> amax(uz(cols), 0.f), inv(uz(cols));
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < cols; ++j)
      amax[uz(j)] = std::max(amax[uz(j)], std::fabs(as_float(x[j * cstride + i * stride])));
  for (index_t j = 0; j < cols; ++j) {
    inv[uz(j)] = amax[uz(j)] > 0.f ? 127.f / amax[uz(j)] : 0.f;
    scales[j] = amax[uz(j)] > 0.f ? amax[uz(j)] / 127.f : 0.f;
  }
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < cols; ++j) {
      const float r = std::nearbyint(as_float(x[j * cstride + i * stride]) * inv[uz(j)]);
      q[j * qcstride + i * qstride] = static_cast<std::int8_t>(std::min(127.f, std::max(-127.f, r)));
    }
}

template <class S>
float quantize_strided(const S* x, index_t n, index_t stride, std::int8_t* q, index_t qstride) {
  float amax = 0.f;
  for (index_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(as_float(x[i * stride])));
  if (!(amax > 0.f)) {
    for (index_t i = 0; i < n; ++i) q[i * qstride] = 0;
    return 0.f;
  }
  const float inv = 127.f / amax;
  for (index_t i = 0; i < n; ++i) {
    const float r = std::nearbyint(as_float(x[i * stride]) * inv);
    q[i * qstride] = static_cast<std::int8_t>(std::min(127.f, std::max(-127.f, r)));
  }
  return amax / 127.f;
}

template <class S>
Int8Tensor quantize_along(const TensorView<const S>& x, const std::string& dim, const char* op) {
  static_assert(std::is_floating_point<S>::value || std::is_same<S, bfloat16>::value,
                "int8 quantization of float, double or bfloat16 tensors");
  const AxisSplit ax(x.shape(), dim, op);
  for (index_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(as_float(x.data()[i])))
      raise<value_error>(op, ": element ", i, " of ", x.shape(), " is ", as_float(x.data()[i]));
  Int8Tensor r{Tensor<std::int8_t>(x.shape(), uninitialized), Tensor<float>(x.shape().without({dim}), uninitialized)};
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t k = 0; k < ax.inner; ++k)
      r.scales[o * ax.inner + k] =
          quantize_strided(x.data() + ax.at(o, 0, k), ax.n, ax.inner, r.values.data() + ax.at(o, 0, k), ax.inner);
  return r;
}

}  // namespace detail

/// Weights -> int8, one scale per output channel: w [dims] -> values [dims],
/// scales [dims without in_dim]. value_error on a non-finite weight.
template <class S>
Int8Tensor quantize_int8(const TensorView<const S>& w, const std::string& in_dim) {
  return detail::quantize_along(w, in_dim, "quantize_int8");
}

/// Activations -> int8, one scale per row: x [rows..., feature_dim] ->
/// values [same], scales [rows...]. (The same arithmetic as quantize_int8,
/// reducing over the feature dim.)
/// Throws shape_error if x lacks feature_dim, value_error for a non-finite element.
template <class S>
Int8Tensor quantize_rows_int8(const TensorView<const S>& x, const std::string& feature_dim) {
  return detail::quantize_along(x, feature_dim, "quantize_rows_int8");
}

/// values * scales, broadcast over the reduced dim: [dims] -> [dims].
/// Throws shape_error if q lacks reduced_dim or its scales do not fit q.
template <class T = float>
Tensor<T> dequantize(const Int8Tensor& q, const std::string& reduced_dim) {
  const detail::AxisSplit ax(q.values.shape(), reduced_dim, "dequantize");
  if (q.scales.shape() != q.values.shape().without({reduced_dim}))
    detail::raise<shape_error>("dequantize: scales ", q.scales.shape(), " do not match values ", q.values.shape(),
                               " without \"", reduced_dim, "\"");
  Tensor<T> out(q.values.shape(), uninitialized);
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t i = 0; i < ax.n; ++i)
      for (index_t k = 0; k < ax.inner; ++k)
        out[ax.at(o, i, k)] = static_cast<T>(static_cast<float>(q.values[ax.at(o, i, k)]) * q.scales[o * ax.inner + k]);
  return out;
}

}  // namespace einmoe
