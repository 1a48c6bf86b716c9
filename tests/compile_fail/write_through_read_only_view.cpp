// Writing through a read-only view does not compile.
// expect-error: assignment of read-only location
#include "einmoe/core/tensor.hpp"
int main() {
  const einmoe::Tensor<float> t(einmoe::Shape{{"a", 2}});
  einmoe::TensorView<const float> v = t;
  v[0] = 1.f;
}
