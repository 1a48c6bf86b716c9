#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("hierarchical MoE matches the numpy transcription, sparse and dense", "[hierarchical][fixtures]") {
  const auto cases = fixtures::cases("hierarchical");
  REQUIRE(cases.size() == 2);
  for (const auto& c : cases) {
    INFO(c.name);
    HierarchicalWeights<double> w;
    w.wg_outer = shared_view(c.load<double>("wg_o", {"model", "outer_experts"}));
    w.wg_inner = shared_view(c.load<double>("wg_i", {"outer_experts", "model", "inner_experts"}));
    w.wi = shared_view(c.load<double>("wi", {"outer_experts", "inner_experts", "model", "hidden"}));
    w.wo = shared_view(c.load<double>("wo", {"outer_experts", "inner_experts", "hidden", "model"}));
    const auto x = c.load<double>("inputs", {"batch", "group", "model"});
    HierarchicalOptions o;
    o.outer.capacity = CapacitySpec::fixed(c.integer("outer_capacity"));
    o.inner.capacity = CapacitySpec::fixed(c.integer("inner_capacity"));
    for (bool dense : {false, true}) {
      o.dense = dense;
      const auto r = hierarchical_moe_forward(x, w, o);
      CHECK(naive::all_close(r.outputs, c.load<double>("expected_outputs", {"batch", "group", "model"}), 1e-12, 1e-12));
      CHECK(r.aux_loss == Approx(c.load<double>("expected_aux_loss", {}).item()).epsilon(1e-10));
    }
  }
}

TEMPLATE_TEST_CASE("hierarchical MoE: sparse equals dense on random sizes", "[hierarchical][property]", float, double) {
  const double tol = std::is_same<TestType, float>::value ? 1e-5 : 1e-12;
  for (int trial = 0; trial < 12; ++trial) {
    auto& g = naive::rng();
    const index_t Eo = std::uniform_int_distribution<index_t>(1, 3)(g),
                  Ei = std::uniform_int_distribution<index_t>(1, 3)(g);
    const index_t N = std::uniform_int_distribution<index_t>(1, 12)(g);
    HierarchicalWeights<TestType> w;
    w.wg_outer = shared_view(naive::random_tensor<TestType>(Shape{{"model", 3}, {"outer_experts", Eo}}));
    w.wg_inner =
        shared_view(naive::random_tensor<TestType>(Shape{{"outer_experts", Eo}, {"model", 3}, {"inner_experts", Ei}}));
    w.wi = shared_view(naive::random_tensor<TestType>(
        Shape{{"outer_experts", Eo}, {"inner_experts", Ei}, {"model", 3}, {"hidden", 4}}));
    w.wo = shared_view(naive::random_tensor<TestType>(
        Shape{{"outer_experts", Eo}, {"inner_experts", Ei}, {"hidden", 4}, {"model", 3}}));
    const auto x = naive::random_tensor<TestType>(Shape{{"batch", 2}, {"group", N}, {"model", 3}});
    HierarchicalOptions o;
    o.outer.capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, N + 1)(g));
    o.inner.capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, 4)(g));
    o.activation = static_cast<Activation>(trial % 4);
    const auto a = hierarchical_moe_forward(x, w, o);
    o.dense = true;
    const auto b = hierarchical_moe_forward(x, w, o);
    INFO("trial " << trial);
    REQUIRE(naive::all_close(a.outputs, b.outputs, tol, tol));
    REQUIRE(naive::close(a.aux_loss, b.aux_loss, tol, tol));
    REQUIRE(a.inner.tokens_per_expert == b.inner.tokens_per_expert);
  }
}

TEST_CASE("hierarchical MoE: inner and outer dims must be distinct", "[hierarchical][errors]") {
  HierarchicalWeights<double> w;
  w.wg_outer = shared_view(naive::random_tensor<double>(Shape::parse("model:2,outer_experts:2")));
  w.wg_inner = shared_view(naive::random_tensor<double>(Shape::parse("outer_experts:2,model:2,inner_experts:2")));
  w.wi = shared_view(naive::random_tensor<double>(Shape::parse("outer_experts:2,inner_experts:2,model:2,hidden:2")));
  w.wo = shared_view(naive::random_tensor<double>(Shape::parse("outer_experts:2,inner_experts:2,hidden:2,model:2")));
  HierarchicalOptions o;
  o.inner_capacity_dim = "outer_capacity";
  CHECK_THROWS_NAMING(
      hierarchical_moe_forward(naive::random_tensor<double>(Shape::parse("batch:1,group:3,model:2")), w, o),
      value_error, "distinct");
}
