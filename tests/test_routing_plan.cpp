#include "check.hpp"
#include "einmoe/einmoe.hpp"

using namespace einmoe;

TEST_CASE("RoutingPlan rebuilds the dense tensors, stats fractions", "[plan]") {
  RoutingPlan<double> p;
  p.reset(Shape::parse("batch:1"), Dim("group", 2), Dim("experts", 2), Dim("expert_capacity", 1), 2);
  CHECK(p.tokens() == 2);
  CHECK(p.expert.size() == 4);
  // token 0 -> expert 1 slot 0 with .75; token 1 -> expert 0 slot 0 with weight 0
  p.expert[0] = 1, p.slot[0] = 0, p.weight[0] = .75;
  p.expert[2] = 0, p.slot[2] = 0, p.weight[2] = 0;
  const auto c = p.combine_tensor();
  CHECK(c.shape() == Shape::parse("batch:1,group:2,experts:2,expert_capacity:1"));
  CHECK(c.to_vector() == std::vector<double>{0, .75, 0, 0});
  CHECK(p.dispatch_tensor().to_vector() == std::vector<double>{0, 1, 0, 0});  // a zero weight is not dispatched
  CHECK(p.bytes() > 0);

  RoutingStats s;
  CHECK(s.dropped_first() == 0.0);
  CHECK(s.fill() == 0.0);
  s.first_wanted = 10, s.first_kept = 8, s.second_wanted = 4, s.second_kept = 1, s.slots = 12;
  CHECK(s.dropped_first() == Approx(0.2));
  CHECK(s.dropped_second() == Approx(0.75));
  CHECK(s.fill() == Approx(0.75));
}

TEST_CASE("RoutingPlan: slots past the group size are not allocated, sizes are checked", "[plan][edge][overflow]") {
  RoutingPlan<float> p;
  p.reset(Shape::parse("batch:1"), Dim("group", 4), Dim("experts", 2), Dim("expert_capacity", index_t{1} << 40), 2);
  CHECK(p.stride == 8);  // S k
  CHECK(p.slot_entry.size() == 16);
  p.reset(Shape::parse("batch:3"), Dim("group", 4), Dim("experts", 2), Dim("expert_capacity", 3), 2);
  CHECK(p.stride == 3);
  CHECK(p.slot_index(2, 1, 2) == (2 * 2 + 1) * 3 + 2);
  // G * S * k overflows
  CHECK_THROWS_AS(p.reset(Shape{{"batch", index_t{1} << 40}}, Dim("group", index_t{1} << 22), Dim("experts", 2),
                          Dim("expert_capacity", 1), 2),
                  shape_error);
  // fits in 64 bits, not in memory
  CHECK_THROWS_AS(p.reset(Shape{{"batch", index_t{1} << 20}}, Dim("group", index_t{1} << 20), Dim("experts", 2),
                          Dim("expert_capacity", 1), 2),
                  resource_error);
  CHECK_THROWS_AS(
      p.reset(Shape::parse("batch:1"), Dim("group", index_t{1} << 31), Dim("experts", 2), Dim("expert_capacity", 1), 2),
      shape_error);
}

TEST_CASE("top-2 and truncated gating: a capacity far above the group size routes as capacity S",
          "[plan][edge][top2]") {
  const Tensor<float> logits = Rng(3).normal<float>(Shape::parse("batch:2,group:16,experts:4"));
  Top2Options small, huge;
  small.capacity = CapacitySpec::fixed(16);
  huge.capacity = CapacitySpec::fixed(index_t{1} << 50);
  const auto a = top2_gating(logits, small), b = top2_gating(logits, huge);
  CHECK(b.plan.stride == 32);  // S k
  CHECK(b.plan.slot_entry.size() == 2 * 4 * 32);
  CHECK(a.plan.expert == b.plan.expert);
  CHECK(a.plan.slot == b.plan.slot);
  CHECK(a.plan.weight == b.plan.weight);
  CHECK(a.aux_loss == b.aux_loss);
  CHECK(b.stats.slots == 2 * 4 * (index_t{1} << 50));
  const Tensor<float> gates = softmax(logits, "experts");
  const auto c = truncated_top2_gating(gates, small), d = truncated_top2_gating(gates, huge);
  CHECK(c.plan.expert == d.plan.expert);
  CHECK(c.plan.weight == d.plan.weight);
  // the statistics' slot count overflows: named, not wrapped
  huge.capacity = CapacitySpec::fixed(index_t{1} << 62);
  CHECK_THROWS_WITH(top2_gating(logits, huge), Catch::Contains("expert_capacity"));
}
