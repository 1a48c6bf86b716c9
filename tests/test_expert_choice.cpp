// routers/expert_choice.hpp: the expert-choice router, hand-worked and
// against its dense oracle.
#include <cmath>

#include "check.hpp"
#include "naive.hpp"
#include "routing_checks.hpp"

using namespace einmoe;
using namespace routing_checks;

TEST_CASE("expert-choice router: hand-worked, ties to the lower token, fast equals dense", "[routers][expert_choice]") {
  // E = 2, S = 3, C = 2: scores for e0 = softmax rows
  const auto L = logits_of(1, 3, 2, {1, 0, 1, 0, -1, 0});
  ExpertChoiceOptions o;
  o.capacity = CapacitySpec::fixed(2);
  const auto r = expert_choice_routing(L, o);
  // e0's scores: .731, .731, .269 -> tokens 0, 1 (tie: lower first); e1: .269, .269, .731 -> tokens 2, 0
  const auto c0 = choices(r.plan, 0), c1 = choices(r.plan, 1), c2 = choices(r.plan, 2);
  CHECK(c0[0].expert == 0);
  CHECK(c0[0].slot == 0);
  CHECK(c1[0].slot == 1);
  CHECK(c2[0].expert == -1);
  CHECK(c2[1].expert == 1);
  CHECK(c2[1].slot == 0);
  CHECK(c0[1].expert == 1);
  CHECK(c0[1].slot == 1);
  CHECK(c1[1].expert == -1);  // token 1 loses e1's tie to token 0
  CHECK(c0[0].weight == Approx(softmax_of({1, 0}, 0)).epsilon(1e-14));
  CHECK(r.aux_loss == 0);
  CHECK(r.stats.tokens_per_expert == std::vector<index_t>{2, 2});
  check_plan_matches_dense(r.plan, expert_choice_routing_dense(L, o), 1e-15);
  auto& g = naive::rng();
  for (int trial = 0; trial < 100; ++trial) {
    const index_t G = std::uniform_int_distribution<index_t>(1, 3)(g),
                  S = std::uniform_int_distribution<index_t>(1, 10)(g);
    const index_t E = std::uniform_int_distribution<index_t>(1, 5)(g);
    o.capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S)(g));
    auto Lr = naive::random_tensor<double>(Shape{{"batch", G}, {"group", S}, {"experts", E}}, -2, 2);
    if (trial % 2 == 0)
      for (auto& v : Lr) v = std::round(v);
    const auto rr = expert_choice_routing(Lr, o);
    const auto dd = expert_choice_routing_dense(Lr, o);
    check_plan_matches_dense(rr.plan, dd, 1e-14);
    CHECK(rr.z_loss == Approx(dd.z_loss).epsilon(1e-12));
  }
  o.capacity = CapacitySpec::fixed(4);
  CHECK_THROWS_NAMING(expert_choice_routing(L, o), value_error, "capacity 4");
}
