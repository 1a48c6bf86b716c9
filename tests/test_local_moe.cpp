#include <cmath>
#include <optional>

#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("local MoE equals gates -> SparseDispatcher -> per-expert FFN -> combine", "[local_moe]") {
  const auto x = naive::random_tensor<double>(Shape::parse("batch:16,model:4"));
  const auto wg = naive::random_tensor<double>(Shape::parse("model:4,experts:5"));
  const auto wn = naive::random_tensor<double>(Shape::parse("model:4,experts:5"));
  ExpertWeights<double> w;
  w.wi = shared_view(naive::random_tensor<double>(Shape::parse("experts:5,model:4,hidden:6")));
  w.wo = shared_view(naive::random_tensor<double>(Shape::parse("experts:5,hidden:6,model:4")));
  NoisyTopKOptions o;
  o.seed = 3;
  Tensor<double> mult(Shape::parse("batch:16"));
  for (index_t i = 0; i < 16; ++i) mult[i] = i % 3 == 0 ? 0.0 : 0.5;
  const std::vector<OptionalView<double>> multipliers{std::nullopt, mult};
  for (const OptionalView<double>& m : multipliers) {
    const auto r = local_moe_forward(x, wg, wn, w, o, ExpertOptions{}, m);
    auto gates = noisy_topk_gating(x, wg, wn, o).gates;
    if (m) gates = gates * *m;
    CHECK(naive::all_close(r.outputs, naive::dispatcher_ffn(gates, x, w), 1e-12));
    CHECK(naive::all_close(r.importance, sum(gates, "batch"), 1e-12));
    CHECK(r.aux_loss(0.01) >= 0.0);
  }
}
