// A tensor is made from a view only explicitly (Tensor(view) or view.copy()).
// expect-error: conversion from .(einmoe::)?TensorView<const float>. to non-scalar type .(einmoe::)?Tensor<float>.
#include "einmoe/core/tensor.hpp"
int main() {
  const einmoe::Tensor<float> t(einmoe::Shape{{"a", 2}});
  einmoe::TensorView<const float> v = t;
  einmoe::Tensor<float> c = v;
  (void)c;
}
