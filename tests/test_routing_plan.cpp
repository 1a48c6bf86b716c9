#include "check.hpp"
#include "einmoe/routers/routing_plan.hpp"

using namespace einmoe;

TEST_CASE("RoutingPlan rebuilds the dense tensors; stats fractions", "[plan]") {
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
