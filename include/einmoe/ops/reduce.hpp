// einmoe/ops/reduce.hpp - reductions over named dims.
//
// Each reduction comes in two forms: over dims (`sum(x, "group")`,
// `sum(x, {"batch", "group"})`; the result keeps x's other dims in x's order)
// and to an output shape (`sum_to(x, shape)`; its dims must be a subset of
// x's and the result takes the given order).
//
// Example:
//   // x: [batch=2, group=3, experts=4]
//   auto s = sum(x, "group");                                   // [batch=2, experts=4]
//   auto t = sum_to(x, Shape{{"experts", 4}, {"batch", 2}});    // [experts=4, batch=2]
//   auto m = max(x, {"batch", "group"});                        // [experts=4]
//
// Over an empty dim: sum 0, mean NaN, max -inf (lowest for integers), min
// +inf (max for integers), any false, all true. max/min propagate NaN.
#pragma once

#include <cmath>
#include <limits>

#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/strided.hpp"

namespace einmoe {
namespace detail {

inline Shape reduced_shape(const Shape& x, const Names& dims, const char* op) {
  for (const auto& n : dims.list) x.require(n, op);
  for (std::size_t i = 0; i < dims.list.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (dims.list[i] == dims.list[j]) raise<shape_error>(op, ": dim \"", dims.list[i], "\" is reduced twice");
  return x.without(dims.list);
}

inline void check_reduce_target(const Shape& x, const Shape& out, const char* op) {
  for (const auto& d : out) {
    const index_t j = x.index_of(d.name);
    if (j < 0) raise<shape_error>(op, ": output dim \"", d.name, "\" is not in the input shape ", x);
    if (x[j].size != d.size)
      raise<shape_error>(op, ": dim \"", d.name, "\" has size ", x[j].size, " in the input but ", d.size,
                         " in the output shape");
  }
}

/// Folds x into `out` (already filled with the identity): out[o] = f(out[o], x[i]).
template <class T, class R, class F>
void fold_into(const TensorView<const T>& x, Tensor<R>& out, F&& f) {
  StridedLoop<2> loop{sizes_of(x.shape()), {x.shape().strides(), strides_in(out.shape(), x.shape())}};
  const T* px = x.data();
  R* po = out.data();
  loop.for_each_row([&](index_t n, const std::array<index_t, 2>& base, const std::array<index_t, 2>& step) {
    const T* xi = px + base[0];
    R* o = po + base[1];
    if (step[1] == 0) {  // the whole row folds into one output element
      R acc = *o;
      for (index_t i = 0; i < n; ++i) acc = f(acc, xi[i * step[0]]);
      *o = acc;
    } else {
      for (index_t i = 0; i < n; ++i) o[i * step[1]] = f(o[i * step[1]], xi[i * step[0]]);
    }
  });
}

template <class T>
constexpr T lowest_value() {
  return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
}
template <class T>
constexpr T highest_value() {
  return std::numeric_limits<T>::has_infinity ? std::numeric_limits<T>::infinity() : std::numeric_limits<T>::max();
}

template <class T>
struct SumOp {
  using result = T;
  static constexpr T init() { return T(0); }
  T operator()(T a, T b) const { return static_cast<T>(a + b); }
};
template <class T>
struct MaxOp {
  using result = T;
  static constexpr T init() { return lowest_value<T>(); }
  T operator()(T a, T b) const { return (b > a || b != b) && a == a ? b : a; }
};
template <class T>
struct MinOp {
  using result = T;
  static constexpr T init() { return highest_value<T>(); }
  T operator()(T a, T b) const { return (b < a || b != b) && a == a ? b : a; }
};
struct AnyOp {
  using result = bool;
  static constexpr bool init() { return false; }
  bool operator()(bool a, bool b) const { return a || b; }
};
struct AllOp {
  using result = bool;
  static constexpr bool init() { return true; }
  bool operator()(bool a, bool b) const { return a && b; }
};

template <class Op, class T>
Tensor<typename Op::result> reduce_to(const TensorView<const T>& x, const Shape& out_shape) {
  Tensor<typename Op::result> out(out_shape, Op::init());
  fold_into(x, out, Op());
  return out;
}

}  // namespace detail

#define EINMOE_REDUCTION(NAME, OP, T_ARG, RESULT)                                      \
  /** Reduces `dims` away: [x.shape] -> [x.shape without dims]. */                     \
  template <class T>                                                                   \
  Tensor<RESULT> NAME(const TensorView<const T_ARG>& x, const Names& dims) {           \
    return detail::reduce_to<OP>(x, detail::reduced_shape(x.shape(), dims, #NAME));    \
  }                                                                                    \
  /** Reduces to `out_shape` (a subset of x's dims, in any order). */                  \
  template <class T>                                                                   \
  Tensor<RESULT> NAME##_to(const TensorView<const T_ARG>& x, const Shape& out_shape) { \
    detail::check_reduce_target(x.shape(), out_shape, #NAME "_to");                    \
    return detail::reduce_to<OP>(x, out_shape);                                        \
  }

EINMOE_REDUCTION(sum, detail::SumOp<T>, T, T)
EINMOE_REDUCTION(max, detail::MaxOp<T>, T, T)
EINMOE_REDUCTION(min, detail::MinOp<T>, T, T)
#undef EINMOE_REDUCTION

/// Any over `dims`: [x.shape] -> [x.shape without dims].
/// Throws shape_error if x lacks one of `dims`.
inline Tensor<bool> any(const TensorView<const bool>& x, const Names& dims) {
  return detail::reduce_to<detail::AnyOp>(x, detail::reduced_shape(x.shape(), dims, "any"));
}
/// Any down to out_shape (a subset of x's dims, in its own order): [x.shape] -> [out_shape].
/// Throws shape_error unless out_shape's dims are x's, with the same sizes.
inline Tensor<bool> any_to(const TensorView<const bool>& x, const Shape& out_shape) {
  detail::check_reduce_target(x.shape(), out_shape, "any_to");
  return detail::reduce_to<detail::AnyOp>(x, out_shape);
}
/// All over `dims`: [x.shape] -> [x.shape without dims].
/// Throws shape_error if x lacks one of `dims`.
inline Tensor<bool> all(const TensorView<const bool>& x, const Names& dims) {
  return detail::reduce_to<detail::AllOp>(x, detail::reduced_shape(x.shape(), dims, "all"));
}
/// All down to out_shape (a subset of x's dims, in its own order): [x.shape] -> [out_shape].
/// Throws shape_error unless out_shape's dims are x's, with the same sizes.
inline Tensor<bool> all_to(const TensorView<const bool>& x, const Shape& out_shape) {
  detail::check_reduce_target(x.shape(), out_shape, "all_to");
  return detail::reduce_to<detail::AllOp>(x, out_shape);
}

namespace detail {
template <class T>
Tensor<T> divide_by_count(Tensor<T> s, index_t in_size) {
  static_assert(std::is_floating_point<T>::value, "mean: needs a floating-point tensor");
  const index_t out_size = s.size();
  const T count = out_size == 0 ? T(1) : static_cast<T>(in_size / out_size);
  for (auto& v : s) v = count == T(0) ? std::numeric_limits<T>::quiet_NaN() : v / count;
  return s;
}
}  // namespace detail

/// Mean over `dims` (floating-point): [x.shape] -> [x.shape without dims].
/// Throws shape_error if x lacks one of `dims`.
template <class T>
Tensor<T> mean(const TensorView<const T>& x, const Names& dims) {
  auto s = detail::reduce_to<detail::SumOp<T>>(x, detail::reduced_shape(x.shape(), dims, "mean"));
  return detail::divide_by_count(std::move(s), x.size());
}
/// Mean to `out_shape`.
/// Throws shape_error unless out_shape's dims are x's, with the same sizes.
template <class T>
Tensor<T> mean_to(const TensorView<const T>& x, const Shape& out_shape) {
  detail::check_reduce_target(x.shape(), out_shape, "mean_to");
  return detail::divide_by_count(detail::reduce_to<detail::SumOp<T>>(x, out_shape), x.size());
}

}  // namespace einmoe
