// A read-only view does not become a mutable one.
// expect-error: conversion from .(einmoe::)?TensorView<const float>. to non-scalar type .(einmoe::)?TensorView<float>.
#include "einmoe/core/tensor.hpp"
int main() {
  const einmoe::Tensor<float> t(einmoe::Shape{{"a", 2}});
  einmoe::TensorView<const float> r = t;
  einmoe::TensorView<float> v = r;
  (void)v;
}
