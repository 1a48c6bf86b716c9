// The control: what the other snippets get wrong, done right, compiles.
#include "einmoe/moe/moe_layer.hpp"
using namespace einmoe;
int main() {
  Tensor<float> t(Shape{{"model", 2}, {"experts", 3}});
  const Tensor<float>& ct = t;
  TensorView<const float> r = ct;  // const tensor -> read-only view
  TensorView<float> w = t;         // tensor -> mutable view
  TensorView<const float> r2 = w;  // mutable -> read-only
  w[0] = 1.f;                      // writes through a mutable view
  Tensor<float> copy = r.copy();   // copies are explicit
  Tensor<float> copy2(r2);
  MoEWeights<float> weights;
  weights.wg = t;  // a view of a tensor that outlives the weights
  return static_cast<int>(r[0] + copy[0] + copy2[0] + weights.wg[0]);
}
