// moe/t2t_hierarchical.hpp: tensor2tensor's hierarchical
// DistributedMixtureOfExperts against the numpy transcription.
#include <cmath>
#include <optional>

#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("t2t hierarchical DistributedMixtureOfExperts matches the numpy transcription",
          "[local_moe][t2t_hierarchical][fixtures]") {
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
    CHECK(naive::all_close(r.importance, c.load<double>("expected_importance", {"outer_experts", "inner_experts"}),
                           1e-12, 1e-12));
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
