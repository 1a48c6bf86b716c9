// einmoe/routers/losses.hpp - balancing losses that are not part of a gating
// function.
//
// Example:
//   float l = cv_squared(importance);   // importance [experts]; t2t / Mesh TF: variance / mean^2, with epsilons
#pragma once

#include "einmoe/core/tensor.hpp"

namespace einmoe {

/// The squared coefficient of variation of all elements of x (t2t's
/// CVSquared): with n = size + 1e-10, mean = sum / n,
/// var = sum((x - mean)^2) / n, result var / (mean^2 + 1e-10). 0 for an
/// empty tensor. Encourages a positive distribution to be uniform.
/// Never throws.
template <class T>
T cv_squared(const TensorView<const T>& x) {
  const T eps = static_cast<T>(1e-10);
  const T n = static_cast<T>(x.size()) + eps;
  T s = T(0);
  for (const T v : x) s += v;
  const T mean = s / n;
  T var = T(0);
  for (const T v : x) var += (v - mean) * (v - mean);
  var /= n;
  return var / (mean * mean + eps);
}

}  // namespace einmoe
