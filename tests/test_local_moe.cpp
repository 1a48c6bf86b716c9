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

TEST_CASE("t2t hierarchical DistributedMixtureOfExperts matches the numpy transcription", "[local_moe][t2t_hierarchical][fixtures]") {
  const auto cases = fixtures::cases("t2t_hierarchical");
  REQUIRE(cases.size() == 2);
  for (const auto& c : cases) {
    INFO(c.name);
    const bool noisy = c.integer("noisy") != 0;
    T2THierarchicalWeights<double> w;
    w.w_gate = shared_view(c.load<double>("w_gate", {"model", "outer_experts"}));
    w.w_gate_inner = shared_view(c.load<double>("w_gate_inner", {"outer_experts", "model", "inner_experts"}));
    w.wi = shared_view(c.load<double>("wi", {"outer_experts", "inner_experts", "model", "hidden"}));
    w.wo = shared_view(c.load<double>("wo", {"outer_experts", "inner_experts", "hidden", "model"}));
    std::optional<Tensor<double>> n1, n2;
    if (noisy) {
      w.w_noise = shared_view(c.load<double>("w_noise", {"model", "outer_experts"}));
      w.w_noise_inner = shared_view(c.load<double>("w_noise_inner", {"outer_experts", "model", "inner_experts"}));
      n1 = c.load<double>("normal_outer", {"batch", "outer_experts"});
      n2 = c.load<double>("normal_inner", {"outer_experts", "batch", "inner_experts"});
    }
    T2THierarchicalOptions o;
    o.k_outer = c.integer("k_outer");
    o.k_inner = c.integer("k_inner");
    const auto x = c.load<double>("inputs", {"batch", "model"});
    const auto r = t2t_hierarchical_moe_forward(x, w, o, n1, n2);
    CHECK(naive::all_close(r.outputs, c.load<double>("expected_outputs", {"batch", "model"}), 1e-12, 1e-12));
    CHECK(naive::all_close(r.importance, c.load<double>("expected_importance", {"outer_experts", "inner_experts"}), 1e-12, 1e-12));
    CHECK(naive::all_close(r.load, c.load<double>("expected_load", {"outer_experts", "inner_experts"}), 1e-12, 1e-12));
    CHECK(std::isfinite(r.aux_loss(1e-2)));
    if (noisy) {
      // without explicit draws: reproducible from the seed, and different from the given draws' result
      const auto a = t2t_hierarchical_moe_forward(x, w, o), b = t2t_hierarchical_moe_forward(x, w, o);
      CHECK(a.outputs.to_vector() == b.outputs.to_vector());
      o.train = false;  // no noise: the draws no longer matter
      const auto e1 = t2t_hierarchical_moe_forward(x, w, o), e2 = t2t_hierarchical_moe_forward(x, w, o, n1, n2);
      CHECK(e1.outputs.to_vector() == e2.outputs.to_vector());
    }
  }
  // errors name the weight
  T2THierarchicalWeights<double> w;
  w.w_gate = shared_view(Tensor<double>(Shape::parse("model:3,outer_experts:2")));
  w.w_gate_inner = shared_view(Tensor<double>(Shape::parse("outer_experts:2,model:3,inner_experts:2")));
  w.wi = shared_view(Tensor<double>(Shape::parse("outer_experts:2,inner_experts:2,model:3,hidden:4")));
  w.wo = shared_view(Tensor<double>(Shape::parse("outer_experts:2,inner_experts:2,hidden:5,model:3")));
  const Tensor<double> x(Shape::parse("batch:4,model:3"));
  CHECK_THROWS_NAMING(t2t_hierarchical_moe_forward(x, w, T2THierarchicalOptions{}), shape_error, "wo");
  w.wo = shared_view(Tensor<double>(Shape::parse("outer_experts:2,inner_experts:2,hidden:4,model:3")));
  w.w_noise = shared_view(Tensor<double>(Shape::parse("model:3,outer_experts:2")));
  CHECK_THROWS_NAMING(t2t_hierarchical_moe_forward(x, w, T2THierarchicalOptions{}), value_error, "w_noise_inner");
}
