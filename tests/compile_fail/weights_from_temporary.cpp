// Weights are views: assigning a temporary tensor (which would dangle) does
// not compile; keep the tensor, or give it to shared_view.
// expect-error: use of deleted function .einmoe::TensorView<const T>& einmoe::TensorView<const T>::operator=\(einmoe::Tensor<T>&&\)
#include "einmoe/moe/moe_layer.hpp"
int main() {
  einmoe::MoEWeights<float> w;
  w.wg = einmoe::Tensor<float>(einmoe::Shape{{"model", 2}, {"experts", 3}});
}
