// einmoe/ops/elementwise.hpp - elementwise ops that broadcast by name.
//
// The broadcast rule is Mesh TF's: if one operand's dims are a subsequence of
// the other's, the result has the larger shape; otherwise it is the first
// operand's dims followed by the second's new dims, in order. An explicit
// output shape wins (every input dim must be in it). A dim name with two sizes
// is a shape_error, never an outer product.
//
// Example:
//   Tensor<float> x(Shape::parse("batch:2,model:3")), b(Shape::parse("model:3"));
//   auto y = x + b;                 // [batch=2, model=3]
//   auto m = greater(x, 0.f);       // Tensor<bool>, [batch=2, model=3]
#pragma once

#include <cmath>
#include <string>

#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/strided.hpp"

namespace einmoe {

/// The shape Mesh TF gives a binary op of shapes a and b.
///   [batch, model] , [model]        -> [batch, model]
///   [batch, length], [model]        -> [batch, length, model]
/// Throws shape_error if a dim has different sizes in a and b.
inline Shape broadcast_shape(const Shape& a, const Shape& b, const char* op = "broadcast") {
  detail::DimRegistry reg(op);
  reg.add(a, "input 0");
  reg.add(b, "input 1");
  if (a.is_subsequence_of(b)) return b;
  if (b.is_subsequence_of(a)) return a;
  std::vector<Dim> dims = a.dims();
  for (const auto& d : b)
    if (!a.has(d.name)) dims.push_back(d);
  return Shape(std::move(dims));
}

namespace detail {

inline void check_into(const Shape& in, const Shape& out, const char* op, const char* which) {
  for (const auto& d : in) {
    const index_t j = out.index_of(d.name);
    if (j < 0) raise<shape_error>(op, ": dim \"", d.name, "\" of ", which, " is not in the output shape ", out);
    if (out[j].size != d.size)
      raise<shape_error>(op, ": dim \"", d.name, "\" has size ", d.size, " in ", which, " but ", out[j].size,
                         " in the output shape");
  }
}

}  // namespace detail

/// Applies f elementwise: [a.shape] -> [a.shape].
/// Throws what f throws.
template <class T, class F>
auto map(const TensorView<const T>& a, F&& f) -> Tensor<decltype(f(T{}))> {
  using R = decltype(f(T{}));
  Tensor<R> out(a.shape(), uninitialized);
  const T* pa = a.data();
  R* po = out.data();
  const index_t n = a.size();
  for (index_t i = 0; i < n; ++i) po[i] = f(pa[i]);
  return out;
}

/// Applies f(a, b) with broadcasting by name; `out_shape` empty (rank 0 and
/// `explicit_shape` false) means "infer with Mesh TF's rule".
/// Throws shape_error if a dim has two sizes, or an explicit shape lacks an input dim;
/// and what f throws.
template <class A, class B, class F>
auto zip_with(const TensorView<const A>& a, const TensorView<const B>& b, F&& f, const Shape* out_shape = nullptr,
              const char* op = "zip_with") -> Tensor<decltype(f(A{}, B{}))> {
  using R = decltype(f(A{}, B{}));
  Shape os;
  if (out_shape) {
    detail::check_into(a.shape(), *out_shape, op, "input 0");
    detail::check_into(b.shape(), *out_shape, op, "input 1");
    os = *out_shape;
  } else {
    os = broadcast_shape(a.shape(), b.shape(), op);
  }
  Tensor<R> out(os, uninitialized);
  detail::StridedLoop<3> loop{detail::sizes_of(os),
                              {os.strides(), detail::strides_in(a.shape(), os), detail::strides_in(b.shape(), os)}};
  R* po = out.data();
  const A* pa = a.data();
  const B* pb = b.data();
  loop.for_each_row([&](index_t n, const std::array<index_t, 3>& base, const std::array<index_t, 3>& step) {
    R* o = po + base[0];
    const A* x = pa + base[1];
    const B* y = pb + base[2];
    if (step[0] == 1 && step[1] == 1 && step[2] == 1) {
      for (index_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
    } else if (step[0] == 1 && step[1] == 1 && step[2] == 0) {
      const B yv = *y;
      for (index_t i = 0; i < n; ++i) o[i] = f(x[i], yv);
    } else if (step[0] == 1 && step[1] == 0 && step[2] == 1) {
      const A xv = *x;
      for (index_t i = 0; i < n; ++i) o[i] = f(xv, y[i]);
    } else {
      for (index_t i = 0; i < n; ++i) o[i * step[0]] = f(x[i * step[1]], y[i * step[2]]);
    }
  });
  return out;
}

/// where(cond, a, b): a where cond is true, else b; broadcast over all three
/// (the output is the broadcast of cond's, a's and b's shapes in that order).
/// Throws shape_error if a dim has two sizes among cond, a and b.
template <class T>
Tensor<T> where(const TensorView<const bool>& cond, const TensorView<const T>& a, const TensorView<const T>& b) {
  const Shape ab = broadcast_shape(a.shape(), b.shape(), "where");
  const Shape os = broadcast_shape(cond.shape(), ab, "where");
  Tensor<T> out(os, uninitialized);
  detail::StridedLoop<4> loop{detail::sizes_of(os),
                              {os.strides(), detail::strides_in(cond.shape(), os), detail::strides_in(a.shape(), os),
                               detail::strides_in(b.shape(), os)}};
  loop.for_each_row([&](index_t n, const std::array<index_t, 4>& base, const std::array<index_t, 4>& step) {
    for (index_t i = 0; i < n; ++i)
      out.data()[base[0] + i * step[0]] =
          cond.data()[base[1] + i * step[1]] ? a.data()[base[2] + i * step[2]] : b.data()[base[3] + i * step[3]];
  });
  return out;
}
/// where with a scalar branch: [cond] , [a] -> broadcast of the two.
/// Throws shape_error if a dim has two sizes in cond and a.
template <class T>
Tensor<T> where(const TensorView<const bool>& cond, const TensorView<const T>& a, type_identity_t<T> b) {
  return where(cond, a, Tensor<T>::scalar(b));
}
template <class T>
Tensor<T> where(const TensorView<const bool>& cond, type_identity_t<T> a, const TensorView<const T>& b) {
  return where(cond, Tensor<T>::scalar(a), b);
}

/// Converts every element: [x.shape] -> [x.shape].
/// Throws resource_error if the tensor would not fit in memory.
template <class U, class T>
Tensor<U> cast(const TensorView<const T>& x) {
  return map(x, [](T v) { return static_cast<U>(v); });
}

// ---- arithmetic, comparisons, logic (tensor op tensor, tensor op scalar) ---

#define EINMOE_BINARY_OP(NAME, EXPR, RESULT)                                                                \
  template <class T>                                                                                        \
  Tensor<RESULT> NAME(const TensorView<const T>& a, const TensorView<const T>& b, const Shape& out_shape) { \
    return zip_with(                                                                                        \
        a, b, [](T x, T y) -> RESULT { return EXPR; }, &out_shape, #NAME);                                  \
  }                                                                                                         \
  template <class T>                                                                                        \
  Tensor<RESULT> NAME(const TensorView<const T>& a, const TensorView<const T>& b) {                         \
    return zip_with(                                                                                        \
        a, b, [](T x, T y) -> RESULT { return EXPR; }, nullptr, #NAME);                                     \
  }                                                                                                         \
  template <class T>                                                                                        \
  Tensor<RESULT> NAME(const TensorView<const T>& a, type_identity_t<T> y) {                                 \
    return map(a, [y](T x) -> RESULT { return EXPR; });                                                     \
  }                                                                                                         \
  template <class T>                                                                                        \
  Tensor<RESULT> NAME(type_identity_t<T> x, const TensorView<const T>& b) {                                 \
    return map(b, [x](T y) -> RESULT { return EXPR; });                                                     \
  }

// Arithmetic. The scalar forms convert the scalar to the tensor's type.
EINMOE_BINARY_OP(add, x + y, T)
EINMOE_BINARY_OP(subtract, x - y, T)
EINMOE_BINARY_OP(multiply, x* y, T)
EINMOE_BINARY_OP(divide, x / y, T)
EINMOE_BINARY_OP(minimum, (y < x ? y : x), T)
EINMOE_BINARY_OP(maximum, (x < y ? y : x), T)
// Comparisons give bool masks. They are named functions, not operators, so
// that `a == b` never silently means "a mask".
EINMOE_BINARY_OP(equal, x == y, bool)
EINMOE_BINARY_OP(not_equal, x != y, bool)
EINMOE_BINARY_OP(less, x < y, bool)
EINMOE_BINARY_OP(less_equal, x <= y, bool)
EINMOE_BINARY_OP(greater, x > y, bool)
EINMOE_BINARY_OP(greater_equal, x >= y, bool)
EINMOE_BINARY_OP(logical_and, x&& y, bool)
EINMOE_BINARY_OP(logical_or, x || y, bool)
#undef EINMOE_BINARY_OP

#define EINMOE_OPERATOR(NAME, SYM)                                                     \
  template <class T>                                                                   \
  Tensor<T> operator SYM(const TensorView<const T>& a, const TensorView<const T>& b) { \
    return NAME(a, b);                                                                 \
  }                                                                                    \
  template <class T>                                                                   \
  Tensor<T> operator SYM(const TensorView<const T>& a, type_identity_t<T> b) {         \
    return NAME(a, b);                                                                 \
  }                                                                                    \
  template <class T>                                                                   \
  Tensor<T> operator SYM(type_identity_t<T> a, const TensorView<const T>& b) {         \
    return NAME(a, b);                                                                 \
  }
EINMOE_OPERATOR(add, +)
EINMOE_OPERATOR(subtract, -)
EINMOE_OPERATOR(multiply, *)
EINMOE_OPERATOR(divide, /)
#undef EINMOE_OPERATOR

/// Elementwise not and negation: [x.shape] -> [x.shape].
/// Throws resource_error if the tensor would not fit in memory.
inline Tensor<bool> logical_not(const TensorView<const bool>& x) {
  return map(x, [](bool v) { return !v; });
}
template <class T>
Tensor<T> operator-(const TensorView<const T>& x) {
  return map(x, [](T v) { return static_cast<T>(-v); });
}

// ---- unary math ------------------------------------------------------------

/// x ** p elementwise: [x.shape] -> [x.shape].
/// Throws resource_error if the tensor would not fit in memory.
template <class T>
Tensor<T> pow(const TensorView<const T>& x, T p) {
  return map(x, [p](T v) { return static_cast<T>(std::pow(v, p)); });
}

/// Scalar forms of the unary ops, shared with code that applies them in its
/// own loops (the expert FFN), so that both compute the same bits.
namespace scalar {
/// max(x, 0); NaN stays NaN (as in TF and PyTorch).
/// Never throws.
template <class T>
T relu(T v) {
  return v < T(0) ? T(0) : v;
}
/// 1 / (1 + e^-x), computed without overflow for large |x|.
/// Never throws.
template <class T>
T sigmoid(T v) {
  return v >= T(0) ? T(1) / (T(1) + std::exp(-v)) : std::exp(v) / (T(1) + std::exp(v));
}
/// log(1 + e^x), computed without overflow for large x.
/// Never throws.
template <class T>
T softplus(T v) {
  return v > T(0) ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v));
}
/// x * Phi(x), the exact erf form: x/2 * (1 + erf(x / sqrt 2)).
/// Never throws.
template <class T>
T gelu(T v) {
  return T(0.5) * v * (T(1) + std::erf(v * T(0.70710678118654752440)));
}
/// The tanh approximation: x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
/// Never throws.
template <class T>
T gelu_tanh(T v) {
  return T(0.5) * v * (T(1) + std::tanh(T(0.79788456080286535588) * (v + T(0.044715) * v * v * v)));
}
/// x * sigmoid(x)
/// Never throws.
template <class T>
T silu(T v) {
  return v * sigmoid(v);
}
}  // namespace scalar

#define EINMOE_UNARY(NAME, EXPR)                  \
  template <class T>                              \
  Tensor<T> NAME(const TensorView<const T>& x) {  \
    return map(x, [](T v) -> T { return EXPR; }); \
  }

EINMOE_UNARY(exp, std::exp(v))
EINMOE_UNARY(log, std::log(v))
EINMOE_UNARY(sqrt, std::sqrt(v))
EINMOE_UNARY(abs, std::abs(v))
EINMOE_UNARY(tanh, std::tanh(v))
EINMOE_UNARY(erf, std::erf(v))
EINMOE_UNARY(relu, scalar::relu(v))
EINMOE_UNARY(sigmoid, scalar::sigmoid(v))
EINMOE_UNARY(softplus, scalar::softplus(v))
EINMOE_UNARY(gelu, scalar::gelu(v))
EINMOE_UNARY(gelu_tanh, scalar::gelu_tanh(v))
EINMOE_UNARY(silu, scalar::silu(v))
#undef EINMOE_UNARY

}  // namespace einmoe
