// A view of a temporary tensor would dangle.
// expect-error: use of deleted function .einmoe::TensorView<const T>::TensorView\(einmoe::Tensor<T>&&\)
#include "einmoe/core/tensor.hpp"
einmoe::Tensor<float> make() { return einmoe::Tensor<float>(einmoe::Shape{{"a", 2}}); }
int main() {
  einmoe::TensorView<const float> v = make();
  (void)v;
}
