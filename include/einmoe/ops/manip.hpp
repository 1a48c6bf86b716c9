// einmoe/ops/manip.hpp - ops that move or relabel elements without arithmetic.
//
// Example:
//   // x: [batch=2, length=3, model=4]
//   auto t = transpose(x, {"model", "batch", "length"});   // [model=4, batch=2, length=3]
//   auto r = rename(x, "length", "memory_length");         // [batch=2, memory_length=3, model=4]
//   auto s = slice(x, "length", 1, 2);                     // [batch=2, length=2, model=4]
//   auto c = concat<float>({x, x}, "length");              // [batch=2, length=6, model=4]
//   auto k = stack<float>({x, x}, "copy", 0);              // [copy=2, batch=2, length=3, model=4]
#pragma once

#include <string>
#include <vector>

#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/strided.hpp"

namespace einmoe {
namespace detail {

/// Copies x into `out`, whose dims are a permutation of x's (same sizes).
/// Up to 16 dims without allocating (the loop state lives on the stack):
/// the output is walked in order, size-1 dims dropped and dims contiguous in
/// both merged, so the inner loop is as long as possible.
template <class T>
void permute_into(const TensorView<const T>& x, Tensor<T>& out) {
  const Shape& os = out.shape();
  constexpr index_t kMax = 16;
  if (os.rank() > kMax) {
    StridedLoop<2> loop{sizes_of(os), {os.strides(), strides_in(x.shape(), os)}};
    const T* px = x.data();
    T* po = out.data();
    loop.for_each_row([&](index_t n, const std::array<index_t, 2>& base, const std::array<index_t, 2>& step) {
      for (index_t i = 0; i < n; ++i) po[base[0] + i * step[0]] = px[base[1] + i * step[1]];
    });
    return;
  }
  if (out.size() == 0) return;
  // x's row-major strides, then the (output-ordered) dims with both strides
  index_t xstride[kMax], size[kMax], so[kMax], sx[kMax];
  const index_t xr = x.rank();
  for (index_t i = xr, acc = 1; i-- > 0;) xstride[i] = acc, acc *= x.shape()[i].size;
  index_t r = 0, acc = 1;
  for (index_t i = os.rank(); i-- > 0;) {  // innermost first
    const Dim& d = os[i];
    const index_t o_stride = acc, x_stride = xstride[x.shape().index_of(d.name)];
    acc *= d.size;
    if (d.size == 1) continue;
    if (r > 0 && so[r - 1] * size[r - 1] == o_stride && sx[r - 1] * size[r - 1] == x_stride) {
      size[r - 1] *= d.size;  // contiguous in both: one longer dim
      continue;
    }
    size[r] = d.size, so[r] = o_stride, sx[r] = x_stride, ++r;
  }
  const T* px = x.data();
  T* po = out.data();
  if (r == 0) {
    *po = *px;
    return;
  }
  index_t ctr[kMax] = {};
  index_t bo = 0, bx = 0;
  const index_t n = size[0], step_o = so[0], step_x = sx[0];
  for (;;) {
    if (step_o == 1 && step_x == 1) {
      std::copy(px + bx, px + bx + n, po + bo);
    } else {
      for (index_t i = 0; i < n; ++i) po[bo + i * step_o] = px[bx + i * step_x];
    }
    index_t d = 1;
    for (; d < r; ++d) {  // advance the outer dims (1 = next to innermost), with carry
      bo += so[d], bx += sx[d];
      if (++ctr[d] < size[d]) break;
      bo -= so[d] * size[d], bx -= sx[d] * size[d];
      ctr[d] = 0;
    }
    if (d == r) return;
  }
}

/// True when reordering `from` into `to` (same dims) moves no element: the
/// dims longer than 1 keep their relative order, or there are no elements.
inline bool is_relabel(const Shape& from, const Shape& to) {
  if (from.num_elements() == 0) return true;
  index_t j = 0;
  for (const auto& d : from) {
    if (d.size == 1) continue;
    while (j < to.rank() && to[j].size == 1) ++j;
    if (j == to.rank() || to[j].name != d.name) return false;
    ++j;
  }
  return true;
}

/// The shape of x's dims in the order given by `names` (a permutation).
inline Shape permuted_shape(const Shape& x, const std::vector<std::string>& names, const char* op) {
  if (static_cast<index_t>(names.size()) != x.rank())
    raise<shape_error>(op, ": ", names.size(), " dims given for shape ", x, " of rank ", x.rank());
  std::vector<Dim> dims;
  for (const auto& n : names) dims.push_back(x.get(n, op));
  return Shape(std::move(dims));  // throws on a repeated name
}

/// shape_error unless `shape` is a reordering of x's dims and sizes.
inline void check_permutation(const Shape& x, const Shape& shape) {
  if (!(shape.rank() == x.rank() && shape.is_subset_of(x)))
    raise<shape_error>("transpose: shape ", shape, " is not a reordering of ", x);
}

}  // namespace detail

/// Reorders x's dims: [x.shape] -> [names...] (same dims, new memory
/// order), into a new tensor. shape_error unless `names` is a permutation of
/// x's dims.
template <class T>
Tensor<T> transpose(const TensorView<const T>& x, const Names& names) {
  const Shape os = detail::permuted_shape(x.shape(), names.list, "transpose");
  Tensor<T> out(os, uninitialized);
  if (detail::is_relabel(x.shape(), os)) {
    std::copy(x.begin(), x.end(), out.begin());
  } else {
    detail::permute_into(x, out);
  }
  return out;
}
/// The same for a tensor given up by the caller: free (a relabel) when no
/// element moves, i.e. x's dims longer than 1 are already in that order.
/// Throws shape_error unless names is a permutation of x's dims.
template <class T>
Tensor<T> transpose(Tensor<T>&& x, const Names& names) {
  const Shape os = detail::permuted_shape(x.shape(), names.list, "transpose");
  if (!detail::is_relabel(x.shape(), os)) return transpose(static_cast<const TensorView<const T>&>(x), names);
  Tensor<T> out = std::move(x);
  out.set_shape(os);
  return out;
}
/// Reorders x's dims to `shape`'s order; shape_error unless `shape` has
/// x's dims and sizes.
template <class T>
Tensor<T> transpose(const TensorView<const T>& x, const Shape& shape) {
  detail::check_permutation(x.shape(), shape);
  return transpose(x, Names(shape.names()));
}
template <class T>
Tensor<T> transpose(Tensor<T>&& x, const Shape& shape) {
  detail::check_permutation(x.shape(), shape);
  return transpose(std::move(x), Names(shape.names()));
}

/// Reorders x's dims without moving an element: [x.shape] -> [names...],
/// O(1), a view of the same elements (as reshape). It applies when the dims
/// longer than 1 keep their order (only size-1 dims move), e.g. [batch=1,
/// group=8, model=4] -> [group, batch, model]. shape_error unless `names` is
/// a permutation of x's dims, and naming the order when an element would
/// move (then use transpose, which copies).
template <class T>
TensorView<T> relabel(const TensorView<T>& x, const Names& names) {
  const Shape os = detail::permuted_shape(x.shape(), names.list, "relabel");
  if (!detail::is_relabel(x.shape(), os))
    detail::raise<shape_error>("relabel: ", x.shape(), " -> ", os, " moves elements (transpose copies them)");
  return reshape(x, os);
}
/// The same for a tensor given up by the caller: the tensor itself, relabelled.
/// Throws as relabel of a view.
template <class T>
Tensor<T> relabel(Tensor<T>&& x, const Names& names) {
  const Shape os = detail::permuted_shape(x.shape(), names.list, "relabel");
  if (!detail::is_relabel(x.shape(), os))
    detail::raise<shape_error>("relabel: ", x.shape(), " -> ", os, " moves elements (transpose copies them)");
  x.set_shape(os);
  return std::move(x);
}

/// Relabels x's row-major elements with a new shape of the same total size,
/// [a=2, b=3] -> [c=6]: O(1), a view of the same elements (mutable for a
/// mutable view, read-only for a tensor or a read-only view; x.view() gives
/// a tensor's mutable view). shape_error if the sizes differ.
template <class T>
TensorView<T> reshape(const TensorView<T>& x, const Shape& shape) {
  TensorView<T> v = x;
  v.set_shape(shape);
  return v;
}
/// The same for a tensor given up by the caller: the tensor itself, relabelled.
/// Throws shape_error if the element counts differ.
template <class T>
Tensor<T> reshape(Tensor<T>&& x, const Shape& shape) {
  x.set_shape(shape);
  return std::move(x);
}

namespace detail {
/// x as [shape] (a permutation of x's dims): x relabelled when no element
/// moves (O(1)), else a view of a transposed copy kept in `holder`.
template <class T>
TensorView<const T> in_order(const TensorView<const T>& x, const Shape& shape, Tensor<T>& holder) {
  if (x.shape() == shape) return x;
  check_permutation(x.shape(), shape);
  if (is_relabel(x.shape(), shape)) return reshape(x, shape);
  holder.resize(shape);  // (reuses the holder's buffer when it has the size)
  permute_into(x, holder);
  return holder;
}
template <class T>
TensorView<const T> in_order(Tensor<T>&&, const Shape&, Tensor<T>&) = delete;  // would dangle

inline Shape renamed_shape(const Shape& s, const std::string& old_name, const std::string& new_name) {
  const index_t i = s.require(old_name, "rename");
  if (new_name != old_name && s.has(new_name))
    raise<shape_error>("rename: dim \"", new_name, "\" already exists in ", s);
  Shape out;
  for (const auto& d : s) out = out.with(d.name == old_name ? Dim(new_name, d.size) : d);
  (void)i;
  return out;
}
}  // namespace detail

/// Renames one dim: [.., old, ..] -> [.., new_name, ..], O(1): a view of the
/// same elements, as reshape. shape_error if old_name is absent or new_name
/// is taken.
template <class T>
TensorView<T> rename(const TensorView<T>& x, const std::string& old_name, const std::string& new_name) {
  return reshape(x, detail::renamed_shape(x.shape(), old_name, new_name));
}
/// The same for a tensor given up by the caller: the tensor itself, relabelled.
/// Throws as rename of a view.
template <class T>
Tensor<T> rename(Tensor<T>&& x, const std::string& old_name, const std::string& new_name) {
  const Shape s = detail::renamed_shape(x.shape(), old_name, new_name);
  return reshape(std::move(x), s);
}

/// A slice of `size` entries of `dim` starting at `begin`:
/// [.., dim, ..] -> [.., dim=size, ..].
/// Throws shape_error if x lacks `dim` or [begin, begin + size) is outside it.
template <class T>
Tensor<T> slice(const TensorView<const T>& x, const std::string& dim, index_t begin, index_t size) {
  const index_t i = x.shape().require(dim, "slice");
  const index_t n = x.shape()[i].size;
  if (begin < 0 || size < 0 || begin + size > n)
    detail::raise<shape_error>("slice: [", begin, ", ", begin + size, ") is out of range for dim \"", dim,
                               "\" of size ", n);
  auto dims = x.shape().dims();
  dims[detail::uz(i)].size = size;
  const Shape os(dims);
  Tensor<T> out(os, uninitialized);
  auto xs = detail::strides_in(x.shape(), os);
  detail::StridedLoop<2> loop{detail::sizes_of(os), {os.strides(), xs}};
  const T* px = x.data() + begin * x.shape().strides()[detail::uz(i)];
  loop.for_each_row([&](index_t cnt, const std::array<index_t, 2>& base, const std::array<index_t, 2>& step) {
    for (index_t k = 0; k < cnt; ++k) out.data()[base[0] + k * step[0]] = px[base[1] + k * step[1]];
  });
  return out;
}

/// Joins tensors along `dim`. Every input has the same other dims and sizes
/// (in any order; the result takes the first input's order).
/// Throws value_error for no inputs, shape_error if an input lacks `dim` or differs
/// elsewhere.
template <class T>
Tensor<T> concat(const std::vector<TensorRef<T>>& refs, const std::string& dim) {
  std::vector<TensorView<const T>> xs;
  for (const auto& r : refs) xs.push_back(r.get());
  if (xs.empty()) detail::raise<value_error>("concat: no inputs");
  const Shape& first = xs[0].shape();
  const index_t axis = first.require(dim, "concat");
  index_t total = 0;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const Shape& s = xs[k].shape();
    const std::string where = "input " + std::to_string(k);
    s.require(dim, "concat");
    if (s.rank() != first.rank())
      detail::raise<shape_error>("concat: input ", k, " has shape ", s, " but input 0 has ", first);
    for (const auto& d : first) {
      if (d.name == dim) continue;
      const index_t j = s.index_of(d.name);
      if (j < 0) detail::raise<shape_error>("concat: dim \"", d.name, "\" of input 0 is missing in ", where);
      if (s[j].size != d.size)
        detail::raise<shape_error>("concat: dim \"", d.name, "\" has size ", d.size, " in input 0 but ", s[j].size,
                                   " in ", where);
    }
    total += s.size_of(dim);
  }
  auto dims = first.dims();
  dims[detail::uz(axis)].size = total;
  const Shape os(dims);
  Tensor<T> out(os, uninitialized);
  const index_t out_stride = os.strides()[detail::uz(axis)];
  index_t at = 0;
  for (const auto& x : xs) {
    auto part_dims = dims;
    part_dims[detail::uz(axis)].size = x.size_of(dim);
    const Shape ps(part_dims);
    detail::StridedLoop<2> loop{detail::sizes_of(ps), {os.strides(), detail::strides_in(x.shape(), ps)}};
    T* po = out.data() + at * out_stride;
    loop.for_each_row([&](index_t n, const std::array<index_t, 2>& base, const std::array<index_t, 2>& step) {
      for (index_t k = 0; k < n; ++k) po[base[0] + k * step[0]] = x.data()[base[1] + k * step[1]];
    });
    at += x.size_of(dim);
  }
  return out;
}

/// Shifts x by `offset` along `dim`: out[i] = x[i - offset]. With wrap the
/// shift is circular; without, vacated entries are zero.
/// Throws shape_error if x lacks `dim`.
template <class T>
Tensor<T> shift(const TensorView<const T>& x, index_t offset, const std::string& dim, bool wrap) {
  const index_t axis = x.shape().require(dim, "shift");
  const index_t n = x.shape()[axis].size;
  const index_t stride = x.shape().strides()[detail::uz(axis)];
  const index_t outer = x.size() == 0 ? 0 : x.size() / (n * stride);
  Tensor<T> out(x.shape(), T{});
  for (index_t o = 0; o < outer; ++o) {
    for (index_t i = 0; i < n; ++i) {
      index_t src = i - offset;
      if (wrap) {
        src %= n;
        if (src < 0) src += n;
      } else if (src < 0 || src >= n) {
        continue;
      }
      const T* from = x.data() + (o * n + src) * stride;
      std::copy(from, from + stride, out.data() + (o * n + i) * stride);
    }
  }
  return out;
}

/// Stacks same-shaped tensors along a new dim `dim` (of size xs.size()) put at
/// position `axis` (0 = first, rank = last).
/// Throws value_error for no inputs or an axis out of range, shape_error if `dim`
/// exists or the inputs' shapes differ.
template <class T>
Tensor<T> stack(const std::vector<TensorRef<T>>& refs, const std::string& dim, index_t axis) {
  std::vector<TensorView<const T>> xs;
  for (const auto& r : refs) xs.push_back(r.get());
  if (xs.empty()) detail::raise<value_error>("stack: no inputs");
  const Shape& s = xs[0].shape();
  if (axis < 0 || axis > s.rank())
    detail::raise<value_error>("stack: axis ", axis, " is out of range for rank ", s.rank());
  if (s.has(dim)) detail::raise<shape_error>("stack: dim \"", dim, "\" already exists in ", s);
  for (std::size_t k = 1; k < xs.size(); ++k)
    if (xs[k].shape() != s)
      detail::raise<shape_error>("stack: input ", k, " has shape ", xs[k].shape(), " but input 0 has ", s);
  auto dims = s.dims();
  dims.insert(dims.begin() + axis, Dim(dim, static_cast<index_t>(xs.size())));
  index_t outer = 1;
  for (index_t i = 0; i < axis; ++i) outer *= s[i].size;
  const index_t inner = outer == 0 ? 0 : s.num_elements() / outer;
  Tensor<T> out(Shape(dims), uninitialized);
  const index_t k_count = static_cast<index_t>(xs.size());
  for (index_t o = 0; o < outer; ++o)
    for (index_t k = 0; k < k_count; ++k) {
      const T* from = xs[detail::uz(k)].data() + o * inner;
      std::copy(from, from + inner, out.data() + (o * k_count + k) * inner);
    }
  return out;
}

/// concat and stack of a vector of tensors or views (no copy before the
/// result's).
/// Throws as concat.
template <class T, class A>
Tensor<T> concat(const std::vector<Tensor<T>, A>& xs, const std::string& dim) {
  return concat(std::vector<TensorRef<T>>(xs.begin(), xs.end()), dim);
}
template <class T, class A>
Tensor<T> concat(const std::vector<TensorView<const T>, A>& xs, const std::string& dim) {
  return concat(std::vector<TensorRef<T>>(xs.begin(), xs.end()), dim);
}
template <class T, class A>
Tensor<T> stack(const std::vector<Tensor<T>, A>& xs, const std::string& dim, index_t axis) {
  return stack(std::vector<TensorRef<T>>(xs.begin(), xs.end()), dim, axis);
}
template <class T, class A>
Tensor<T> stack(const std::vector<TensorView<const T>, A>& xs, const std::string& dim, index_t axis) {
  return stack(std::vector<TensorRef<T>>(xs.begin(), xs.end()), dim, axis);
}

/// Splits x along `dim` into x.size_of(dim) tensors without that dim:
/// [..., dim=n, ...] -> n x [..., ...].
/// Throws shape_error if x lacks `dim`.
template <class T>
std::vector<Tensor<T>> unstack(const TensorView<const T>& x, const std::string& dim) {
  const index_t n = x.shape().size_of(dim, "unstack");
  std::vector<Tensor<T>> out;
  out.reserve(detail::uz(n));
  for (index_t k = 0; k < n; ++k) out.push_back(reshape(slice(x, dim, k, 1), x.shape().without({dim})));
  return out;
}

}  // namespace einmoe
