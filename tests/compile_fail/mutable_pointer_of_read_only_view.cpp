// A read-only view gives const pointers only.
// expect-error: invalid conversion from .const float\*. to .float\*.
#include "einmoe/core/tensor.hpp"
int main() {
  const einmoe::Tensor<float> t(einmoe::Shape{{"a", 2}});
  einmoe::TensorView<const float> v = t;
  float* p = v.data();
  (void)p;
}
