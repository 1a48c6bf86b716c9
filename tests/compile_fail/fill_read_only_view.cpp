// A read-only view has no fill.
// expect-error: has no member named .fill.
#include "einmoe/core/tensor.hpp"
int main() {
  const einmoe::Tensor<float> t(einmoe::Shape{{"a", 2}});
  einmoe::TensorView<const float> v = t;
  v.fill(0.f);
}
