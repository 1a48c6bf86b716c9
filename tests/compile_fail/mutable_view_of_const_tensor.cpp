// A const tensor gives read-only views only.
// expect-error: binding reference of type .einmoe::Tensor<float>&. to .const einmoe::Tensor<float>. discards qualifiers
#include "einmoe/core/tensor.hpp"
int main() {
  const einmoe::Tensor<float> t(einmoe::Shape{{"a", 2}});
  einmoe::TensorView<float> v = t;
  (void)v;
}
