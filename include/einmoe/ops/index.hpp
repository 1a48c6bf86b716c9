// einmoe/ops/index.hpp - ops on integer indices: one_hot, top1, topk,
// gather, range.
//
// Example:
//   // x: [group=3, experts=4]
//   auto [v, i] = top1(x, "experts");            // v, i: [group=3]
//   auto oh = one_hot<float>(i, Dim{"experts", 4}); // [group=3, experts=4]
//   auto t = topk(x, "experts", Dim{"k", 2});      // values, indices: [group=3, k=2]
//
// Ordering: larger first; ties go to the lower index; NaN counts as larger
// than any number (so argmax of a row with a NaN is its first NaN, as numpy).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/axis.hpp"
#include "einmoe/detail/strided.hpp"
#include "einmoe/ops/manip.hpp"

namespace einmoe {

/// Values and their int64 positions along the reduced dim.
template <class T>
struct TopKResult {
  Tensor<T> values;
  Tensor<std::int64_t> indices;
};

namespace detail {
/// a ranks before b: larger, with NaN largest.
template <class T>
inline bool ranks_before(T a, T b) {
  const bool an = a != a, bn = b != b;
  if (an || bn) return an && !bn;
  return a > b;
}
}  // namespace detail

/// [indices.shape] -> [indices.shape, dim]: `on` where the last coordinate
/// equals the index, `off` elsewhere; an index outside [0, dim.size) gives an
/// all-`off` row.
/// Throws shape_error if indices already have `dim`.
template <class T = float, class I>
Tensor<T> one_hot(const TensorView<const I>& indices, const Dim& dim, T on = T(1), T off = T(0)) {
  static_assert(std::is_integral<I>::value, "one_hot: indices must be integers");
  if (indices.shape().has(dim.name))
    detail::raise<shape_error>("one_hot: dim \"", dim.name, "\" is already in the indices' shape ", indices.shape());
  Tensor<T> out(indices.shape().with(dim), off);
  const index_t n = dim.size;
  for (index_t p = 0; p < indices.size(); ++p) {
    const auto id = static_cast<index_t>(indices[p]);
    if (id >= 0 && id < n) out[p * n + id] = on;
  }
  return out;
}

/// The k largest entries along `dim`: [.., dim, ..] -> values and indices of
/// shape [.. without dim, k_dim] (k_dim last), best first.
/// Throws shape_error if x lacks `dim`, k_dim is longer than it, or k_dim is
/// already one of x's dims.
template <class T>
TopKResult<T> topk(const TensorView<const T>& x, const std::string& dim, const Dim& k_dim) {
  const detail::AxisSplit ax(x.shape(), dim, "topk");
  if (k_dim.size > ax.n)
    detail::raise<shape_error>("topk: k dim \"", k_dim.name, "\" has size ", k_dim.size, " but dim \"", dim,
                               "\" has only ", ax.n);
  const Shape rest = x.shape().without({dim});
  if (rest.has(k_dim.name)) detail::raise<shape_error>("topk: k dim \"", k_dim.name, "\" is already in ", x.shape());
  const Shape os = rest.with(k_dim);
  TopKResult<T> r{Tensor<T>(os, uninitialized), Tensor<std::int64_t>(os, uninitialized)};
  std::vector<index_t> order(detail::uz(ax.n));
  const index_t k = k_dim.size;
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t j = 0; j < ax.inner; ++j) {
      const T* base = x.data() + ax.at(o, 0, j);
      std::iota(order.begin(), order.end(), index_t{0});
      auto before = [&](index_t a, index_t b) {
        const T va = base[a * ax.inner], vb = base[b * ax.inner];
        if (detail::ranks_before(va, vb)) return true;
        if (detail::ranks_before(vb, va)) return false;
        return a < b;
      };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
      const index_t out_row = (o * ax.inner + j) * k;
      for (index_t t = 0; t < k; ++t) {
        r.values[out_row + t] = base[order[detail::uz(t)] * ax.inner];
        r.indices[out_row + t] = order[detail::uz(t)];
      }
    }
  return r;
}

/// Which index wins among equal largest entries.
enum class Ties {
  lowest,   ///< the lowest index (tf.argmax, numpy, lingvo; Mesh TF since Sept. 2019)
  highest,  ///< the highest index (mtf.top_1 before Sept. 2019: reduce_max of range * one_hot)
};

inline const char* to_string(Ties t) { return t == Ties::lowest ? "lowest" : "highest"; }
inline Ties parse_ties(const std::string& s) {
  if (s == "lowest") return Ties::lowest;
  if (s == "highest") return Ties::highest;
  detail::raise<value_error>("unknown ties rule \"", s, "\" (lowest, highest)");
}

namespace detail {
/// True when candidate entry x (at a higher index than the best so far)
/// replaces best under `ties`.
template <class T>
inline bool replaces_best(T x, T best, Ties ties) {
  return ties == Ties::lowest ? ranks_before(x, best) : !ranks_before(best, x);
}
}  // namespace detail

/// The largest entry along `dim` and its position (ties -> the lowest index,
/// or the highest with Ties::highest; NaN ranks above everything):
/// [.., dim, ..] -> values, indices [.. without dim].
/// Throws shape_error if x lacks `dim` or it is empty.
template <class T>
TopKResult<T> top1(const TensorView<const T>& x, const std::string& dim, Ties ties = Ties::lowest) {
  const detail::AxisSplit ax(x.shape(), dim, "top1");
  if (ax.n == 0) detail::raise<shape_error>("top1: dim \"", dim, "\" is empty");
  const Shape os = x.shape().without({dim});
  TopKResult<T> r{Tensor<T>(os, uninitialized), Tensor<std::int64_t>(os, uninitialized)};
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t j = 0; j < ax.inner; ++j) {
      const T* base = x.data() + ax.at(o, 0, j);
      index_t best = 0;
      for (index_t i = 1; i < ax.n; ++i)
        if (detail::replaces_best(base[i * ax.inner], base[best * ax.inner], ties)) best = i;
      r.values[o * ax.inner + j] = base[best * ax.inner];
      r.indices[o * ax.inner + j] = best;
    }
  return r;
}

/// [dim]: 0, 1, ..., dim.size - 1.
/// Throws resource_error if the tensor would not fit in memory.
template <class T = std::int64_t>
Tensor<T> range(const Dim& dim) {
  Tensor<T> out(Shape{dim}, uninitialized);
  for (index_t i = 0; i < dim.size; ++i) out[i] = static_cast<T>(i);
  return out;
}

/// Mesh TF's gather: picks entries of x along `dim` at `indices`.
/// Shape: [indices.shape] + [x.shape without dim and without indices' dims];
/// dims shared by x and indices are matched (batch dims). An index outside
/// [0, size of dim) gives 0, as Mesh TF's one-hot formulation does.
///   x: [batch, beam, length], i: [batch] (over "beam") -> [batch, length]
/// Throws shape_error if x lacks `dim`, the indices have it, or a dim has two sizes.
template <class T, class I>
Tensor<T> gather(const TensorView<const T>& x, const TensorView<const I>& indices, const std::string& dim) {
  static_assert(std::is_integral<I>::value, "gather: indices must be integers");
  const index_t axis = x.shape().require(dim, "gather");
  if (indices.shape().has(dim))
    detail::raise<shape_error>("gather: dim \"", dim, "\" must not be in the indices' shape ", indices.shape());
  detail::DimRegistry reg("gather");
  reg.add(x.shape(), "the input");
  reg.add(indices.shape(), "the indices");
  std::vector<Dim> dims = indices.shape().dims();
  for (const auto& d : x.shape())
    if (d.name != dim && !indices.shape().has(d.name)) dims.push_back(d);
  const Shape os(std::move(dims));
  Tensor<T> out(os, uninitialized);
  const index_t n = x.shape()[axis].size;
  const index_t dstride = x.shape().strides()[detail::uz(axis)];
  detail::StridedLoop<3> loop{
      detail::sizes_of(os), {os.strides(), detail::strides_in(indices.shape(), os), detail::strides_in(x.shape(), os)}};
  loop.for_each_row([&](index_t cnt, const std::array<index_t, 3>& base, const std::array<index_t, 3>& step) {
    for (index_t i = 0; i < cnt; ++i) {
      const auto id = static_cast<index_t>(indices[base[1] + i * step[1]]);
      out[base[0] + i * step[0]] = (id >= 0 && id < n) ? x[base[2] + i * step[2] + id * dstride] : T(0);
    }
  });
  return out;
}

/// The result of gather_k: the gathered values and which of the k places
/// are padding.
template <class T>
struct GatherKResult {
  Tensor<T> output;   ///< [<batch>, k, ...]
  Tensor<T> padding;  ///< [<batch>, k]: 1 where fewer than k positions were selected
};

/// lingvo's GatherK: up to k values at the selected positions of each row.
/// selected [<batch>, time] (0 or 1), values [<batch>, time, ...] ->
/// output [<batch>, k, ...] and padding [<batch>, k]. Per row, the last k
/// selected positions in ascending order; when fewer than k are selected,
/// the padding places come first. As lingvo's code (not its docstring, whose
/// example shows zeros there) gathers position max(0, index - 1), a padding
/// place holds the row's value at time 0; mask it with padding. k may not
/// exceed the time dim (tf.math.top_k's rule).
/// Throws shape_error if the time or k dims are missing or clash, value_error if k
/// exceeds the time dim or a selected index is out of range.
template <class T, class I>
GatherKResult<T> gather_k(const TensorView<const I>& selected, const TensorView<const T>& values, const Dim& k,
                          const std::string& time_dim = "time") {
  static_assert(std::is_integral<I>::value || std::is_same<I, bool>::value, "gather_k: selected must be 0/1 integers");
  const char* op = "gather_k";
  const Dim time = selected.shape().get(time_dim, op);
  if (values.shape().get(time_dim, op) != time)
    detail::raise<shape_error>(op, ": dim \"", time_dim, "\" has size ", values.shape().size_of(time_dim),
                               " in the values but ", time.size, " in selected");
  if (selected.shape().has(k.name) || values.shape().has(k.name))
    detail::raise<shape_error>(op, ": k dim \"", k.name, "\" is already in ", selected.shape(), " or ", values.shape());
  if (k.size > time.size)
    detail::raise<value_error>(op, ": k = ", k.size, " exceeds dim \"", time_dim, "\" of size ", time.size);
  const Shape batch = selected.shape().without({time_dim});
  for (const auto& d : batch)
    if (!values.shape().has(d.name) || values.shape().size_of(d.name) != d.size)
      detail::raise<shape_error>(op, ": values ", values.shape(), " lack selected's dim ", d);
  Tensor<I> hold;
  const TensorView<const I>& sel = detail::in_order(selected, batch.with(time), hold);
  const index_t B = batch.num_elements(), Tn = time.size, K = k.size;
  Tensor<std::int64_t> positions(batch.with(k), uninitialized);
  GatherKResult<T> r;
  r.padding = Tensor<T>(batch.with(k), T(0));
  std::vector<index_t> chosen;
  for (index_t b = 0; b < B; ++b) {
    chosen.clear();
    for (index_t t = 0; t < Tn; ++t) {
      const auto v = sel[b * Tn + t];
      if (v != I(0) && v != I(1))
        detail::raise<value_error>(op, ": selected holds ", static_cast<long long>(v), " at [", b, ", ", t,
                                   "]; must be 0 or 1");
      if (v == I(1)) chosen.push_back(t);
    }
    const index_t m = std::min<index_t>(static_cast<index_t>(chosen.size()), K);
    const index_t pad = K - m;
    for (index_t j = 0; j < K; ++j) {
      if (j < pad) {
        positions[b * K + j] = 0;  // max(0, 0 - 1)
        r.padding[b * K + j] = T(1);
      } else {
        positions[b * K + j] = chosen[chosen.size() - static_cast<std::size_t>(m) + static_cast<std::size_t>(j - pad)];
      }
    }
  }
  r.output = gather(values, positions, time_dim);
  return r;
}

}  // namespace einmoe
