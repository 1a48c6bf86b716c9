// Built against the installed package by the consumer_find_package test, the
// way most users build: CMAKE_BUILD_TYPE=Release, no -march flags. Checks an
// einsum by hand and runs an MoE layer through the expert kernels (oneDNN
// when the package carries it) against the dense oracle.
#include <einmoe/einmoe.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  using namespace einmoe;
  Tensor<float> x(Shape::parse("batch:2,model:3"), {1, 2, 3, 4, 5, 6});
  Tensor<float> w(Shape::parse("model:3,hidden:2"), {1, 0, 0, 1, 1, 1});
  const auto y = einsum({x, w}, Shape::parse("batch:2,hidden:2"));
  // [[1+3, 2+3], [4+6, 5+6]]
  bool ok = y.at({0, 0}) == 4.f && y.at({0, 1}) == 5.f && y.at({1, 0}) == 10.f && y.at({1, 1}) == 11.f;
  std::printf("einmoe %s consumer: einsum %s\n", einmoe::version, ok ? "ok" : "WRONG");

  // --expect-dnnl: the package was built with oneDNN, so the consumer must get it too
  const bool expect_dnnl = argc > 1 && std::strcmp(argv[1], "--expect-dnnl") == 0;
  if (expect_dnnl && !has_dnnl()) {
    std::printf("consumer: the package has oneDNN but the consumer was not given it\n");
    return 1;
  }
  Rng rng(7);
  const Tensor<float> wg = rng.normal<float>(Shape::parse("model:64,experts:4"));
  const Tensor<float> wi = rng.normal<float>(Shape::parse("experts:4,model:64,hidden:96"));
  const Tensor<float> wo = rng.normal<float>(Shape::parse("experts:4,hidden:96,model:64"));
  MoEWeights<float> mw;  // read-only views of the tensors above
  mw.wg = wg;
  mw.experts.wi = wi;
  mw.experts.wo = wo;
  const auto xs = rng.normal<float>(Shape::parse("batch:2,group:40,model:64"));
  MoEOptions o;
  Top2Options gating;
  gating.capacity = CapacitySpec::fixed(40);
  o.router = gating;
  const Backend used = has_dnnl() ? Backend::dnnl : Backend::eigen;
  o.backend = used;
  const auto fast = MoELayer<float>(mw, o).forward(xs);
  o.dense = true;
  o.backend = Backend::automatic;
  const auto dense = moe_forward(xs, mw, o);
  float err = 0, ymax = 0;
  for (index_t i = 0; i < fast.outputs.size(); ++i) {
    err = std::max(err, std::fabs(fast.outputs[i] - dense.outputs[i]));
    ymax = std::max(ymax, std::fabs(dense.outputs[i]));
  }
  const bool layer_ok = ymax > 0 && err <= 1e-5f * ymax;
  std::printf("einmoe consumer: MoE layer on %s %s (max |diff| / max |y| = %.2g)\n", to_string(used),
              layer_ok ? "ok" : "WRONG", static_cast<double>(err / ymax));
  return ok && layer_ok ? 0 : 1;
}
