// einmoe/kernels/activation.hpp - the expert hidden-layer activations.
//
//   relu       max(x, 0) (NaN stays NaN)
//   gelu       x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))       (PyTorch's gelu, HF "gelu")
//   gelu_tanh  x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (HF "gelu_new", "gelu_pytorch_tanh")
//   silu       x * sigmoid(x)                                  (HF "silu", "swish")
#pragma once

#include <cmath>
#include <string>
#include <type_traits>

#include "einmoe/core/dim.hpp"
#include "einmoe/core/error.hpp"
#include "einmoe/ops/elementwise.hpp"

namespace einmoe {

/// The expert hidden-layer activation (gated experts apply it to the gate).
enum class Activation { relu, gelu, gelu_tanh, silu };

inline const char* to_string(Activation a) {
  switch (a) {
    case Activation::relu: return "relu";
    case Activation::gelu: return "gelu";
    case Activation::gelu_tanh: return "gelu_tanh";
    default: return "silu";
  }
}
inline Activation parse_activation(const std::string& s) {
  for (auto a : {Activation::relu, Activation::gelu, Activation::gelu_tanh, Activation::silu})
    if (s == to_string(a)) return a;
  detail::raise<value_error>("unknown activation \"", s, "\" (relu, gelu, gelu_tanh, silu)");
}

namespace detail {
/// x[i] = act(x[i]) for i < n, with the scalar functions of ops/elementwise.
template <class T>
void apply_activation(Activation a, T* x, index_t n) {
  switch (a) {
    case Activation::relu:
      for (index_t i = 0; i < n; ++i) x[i] = scalar::relu(x[i]);
      break;
    case Activation::gelu:
      for (index_t i = 0; i < n; ++i) x[i] = scalar::gelu(x[i]);
      break;
    case Activation::gelu_tanh:
      for (index_t i = 0; i < n; ++i) x[i] = scalar::gelu_tanh(x[i]);
      break;
    default:
      for (index_t i = 0; i < n; ++i) x[i] = scalar::silu(x[i]);
      break;
  }
}

/// act'(x): relu's derivative is 0 at 0 (as PyTorch's), gelu's is
/// Phi(x) + x phi(x), gelu_tanh's the derivative of its tanh form, silu's
/// sigmoid(x) (1 + x (1 - sigmoid(x))).
template <class T>
T activation_grad(Activation a, T v) {
  switch (a) {
    case Activation::relu: return v > T(0) ? T(1) : T(0);
    case Activation::gelu: {
      const T cdf = T(0.5) * (T(1) + std::erf(v * T(0.70710678118654752440)));
      return cdf + v * T(0.39894228040143267794) * std::exp(T(-0.5) * v * v);
    }
    case Activation::gelu_tanh: {
      const T c = T(0.79788456080286535588), th = std::tanh(c * (v + T(0.044715) * v * v * v));
      return T(0.5) * (T(1) + th) + T(0.5) * v * (T(1) - th * th) * c * (T(1) + T(3) * T(0.044715) * v * v);
    }
    default: {
      const T sg = scalar::sigmoid(v);
      return sg * (T(1) + v * (T(1) - sg));
    }
  }
}

/// y[i] = act'(x[i]) for i < n (one loop per activation, so that each
/// vectorizes).
template <class T>
void activation_grad_into(Activation a, const T* x, T* y, index_t n) {
  auto each = [&](auto act) {
    for (index_t i = 0; i < n; ++i) y[i] = activation_grad(decltype(act)::value, x[i]);
  };
  switch (a) {
    case Activation::relu: return each(std::integral_constant<Activation, Activation::relu>{});
    case Activation::gelu: return each(std::integral_constant<Activation, Activation::gelu>{});
    case Activation::gelu_tanh: return each(std::integral_constant<Activation, Activation::gelu_tanh>{});
    default: return each(std::integral_constant<Activation, Activation::silu>{});
  }
}

}  // namespace detail

}  // namespace einmoe
