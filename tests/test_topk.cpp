// routers/topk.hpp and topk_dense.hpp: the top-k router's hand-worked
// cases (Switch, DeepSpeed, Mixtral/Qwen, DeepSeek-V3), the fast plan against
// the dense one-hot oracle, the losses, auxiliary-loss-free balancing, errors.
#include <cmath>

#include "check.hpp"
#include "naive.hpp"
#include "routing_checks.hpp"

using namespace einmoe;
using namespace routing_checks;

TEST_CASE("topk router: Switch top-1 with capacity, choice and batch-prioritized order", "[routers][topk]") {
  // token 0 -> e0 (0.881), token 1 -> e0 (0.953), token 2 -> e1 (0.731); C = 1
  const auto L = logits_of(1, 3, 2, {2, 0, 3, 0, 0, 1});
  TopKOptions o;
  o.k = 1;
  o.capacity = CapacitySpec::fixed(1);
  auto r = topk_routing(L, o);
  CHECK(choices(r.plan, 0)[0].expert == 0);
  CHECK(choices(r.plan, 0)[0].slot == 0);
  CHECK(choices(r.plan, 0)[0].weight == Approx(softmax_of({2, 0}, 0)).epsilon(1e-14));
  CHECK(choices(r.plan, 1)[0].expert == -1);  // token order: token 0 took the slot
  CHECK(choices(r.plan, 1)[0].weight == 0);
  CHECK(choices(r.plan, 2)[0].expert == 1);
  CHECK(r.stats.first_wanted == 3);
  CHECK(r.stats.first_kept == 2);
  o.priority = Priority::bpr;  // token 1 has the higher top-1 score and goes first
  r = topk_routing(L, o);
  CHECK(choices(r.plan, 0)[0].expert == -1);
  CHECK(choices(r.plan, 1)[0].expert == 0);
  CHECK(choices(r.plan, 1)[0].slot == 0);
  // losses: E^2 * mean_e(frac_e * mean score_e); z = mean logsumexp^2
  const double p00 = softmax_of({2, 0}, 0), p10 = softmax_of({3, 0}, 0), p20 = softmax_of({0, 1}, 0);
  const double frac0 = 2.0 / 3, frac1 = 1.0 / 3;
  const double m0 = (p00 + p10 + p20) / 3, m1 = 1 - m0;
  CHECK(r.aux_loss == Approx(4 * (frac0 * m0 + frac1 * m1) / 2).epsilon(1e-12));
  const auto lse = [](double a, double b) { return std::log(std::exp(a) + std::exp(b)); };
  CHECK(r.z_loss ==
        Approx((std::pow(lse(2, 0), 2) + std::pow(lse(3, 0), 2) + std::pow(lse(0, 1), 2)) / 3).epsilon(1e-12));
}

TEST_CASE("topk router: k = 2, choice vs token priority, normalizations", "[routers][topk]") {
  // token 0 -> e0, e1; token 1 -> e1, e2; C = 1
  const auto L = logits_of(1, 2, 3, {2, 1, 0, 0, 2, 1});
  TopKOptions o;
  o.k = 2;
  o.capacity = CapacitySpec::fixed(1);
  auto r = topk_routing(L, o);  // choice: rank 0 of every token first
  auto c0 = choices(r.plan, 0), c1 = choices(r.plan, 1);
  CHECK(c0[0].expert == 0);
  CHECK(c0[1].expert == -1);  // e1's slot went to token 1's first choice
  CHECK(c1[0].expert == 1);
  CHECK(c1[1].expert == 2);
  o.priority = Priority::token;  // token 0's two choices first
  r = topk_routing(L, o);
  c0 = choices(r.plan, 0), c1 = choices(r.plan, 1);
  CHECK(c0[0].expert == 0);
  CHECK(c0[1].expert == 1);
  CHECK(c1[0].expert == -1);
  CHECK(c1[1].expert == 2);
  // normalize topk (before capacity): token 0's kept weight stays p0 / (p0 + p1)
  const double p0 = softmax_of({2, 1, 0}, 0), p1 = softmax_of({2, 1, 0}, 1);
  o.priority = Priority::choice;
  o.normalize = TopKNormalize::topk;
  r = topk_routing(L, o);
  CHECK(choices(r.plan, 0)[0].weight == Approx(p0 / (p0 + p1)).epsilon(1e-14));
  // normalize kept (after capacity): the only kept choice gets 1
  o.normalize = TopKNormalize::kept;
  o.scale = 3;
  r = topk_routing(L, o);
  CHECK(choices(r.plan, 0)[0].weight == Approx(3.0).epsilon(1e-14));
  // dropless: everything kept, slots in choice order
  o.capacity = CapacitySpec::dropless();
  o.normalize = TopKNormalize::none;
  o.scale = 1;
  r = topk_routing(L, o);
  CHECK(r.plan.capacity.size == 2);
  CHECK(choices(r.plan, 0)[1].expert == 1);
  CHECK(choices(r.plan, 0)[1].slot == 1);  // after token 1's first choice
  CHECK(r.stats.dropped_first() == 0);
  CHECK(r.stats.dropped_second() == 0);
}

TEST_CASE("topk router: DeepSeek-V3 sigmoid scores, selection bias, group-limited, scale", "[routers][topk]") {
  // s = sigmoid([0, 0, 1, -1]) = [.5, .5, .731, .269]
  const auto L = logits_of(1, 1, 4, {0, 0, 1, -1});
  TopKOptions o;
  o.k = 2;
  o.score = Score::sigmoid;
  o.expert_groups = 2;
  o.topk_expert_groups = 1;
  o.normalize = TopKNormalize::topk;
  o.scale = 2;
  // without bias the two groups tie (1.0 each): the lower group, then the lower expert
  auto r = topk_routing(L, o);
  auto c = choices(r.plan, 0);
  CHECK(c[0].expert == 0);
  CHECK(c[1].expert == 1);
  CHECK(c[0].weight == Approx(1.0).epsilon(1e-14));  // 2 * .5 / (.5 + .5)
  // bias 0.5 on e3: group 1 scores .731 + .769 > 1, and e3 ranks first; weights unbiased
  o.bias = {0, 0, 0, 0.5};
  r = topk_routing(L, o);
  c = choices(r.plan, 0);
  CHECK(c[0].expert == 3);
  CHECK(c[1].expert == 2);
  const double s2 = sigmoid(1), s3 = sigmoid(-1);
  CHECK(c[0].weight == Approx(2 * s3 / (s2 + s3 + 1e-20)).epsilon(1e-14));
  CHECK(c[1].weight == Approx(2 * s2 / (s2 + s3 + 1e-20)).epsilon(1e-14));
  // masked groups score 0, not -inf: with negative biased scores a masked expert can win
  o.bias = {-1, -1, -1, -1};
  o.k = 2;
  o.topk_expert_groups = 1;
  const auto L2 = logits_of(1, 1, 4, {5, 5, -5, -5});
  r = topk_routing(L2, o);  // group 0 wins; its c are ~-0.007, the masked group's are 0
  c = choices(r.plan, 0);
  CHECK(c[0].expert == 2);
  CHECK(c[1].expert == 3);
  const auto d = topk_routing_dense(L2, o);
  check_plan_matches_dense(r.plan, d, 1e-15);
}

TEST_CASE("topk router: the experts of groups left out score 0 (Hugging Face) or -inf (DeepSeek)", "[routers][topk]") {
  // Hand-worked. Sigmoid scores of zero logits are 0.5; with the bias the
  // selection scores are c = [0.4, -0.4, 0.3, -0.3, -0.45, -0.45]. Groups of
  // two score 0.0, 0.0 and -0.9: groups 0 and 1 stay eligible, group 2
  // (experts 4, 5) is left out. The three best of c:
  //   zero fill:    0.4 (e0), 0.3 (e2), 0 (e4, ahead of e5 and of -0.3)
  //   -inf fill:    0.4 (e0), 0.3 (e2), -0.3 (e3)
  const auto L = logits_of(1, 1, 6, {0, 0, 0, 0, 0, 0});
  TopKOptions o;
  o.k = 3;
  o.score = Score::sigmoid;
  o.bias = {-0.1, -0.9, -0.2, -0.8, -0.95, -0.95};
  o.expert_groups = 3;
  o.topk_expert_groups = 2;
  auto experts = [&](GroupFill f) {
    o.group_fill = f;
    const auto r = topk_routing(L, o);
    check_plan_matches_dense(r.plan, topk_routing_dense(L, o), 1e-15);
    std::vector<std::int32_t> e;
    for (const auto& c : choices(r.plan, 0)) e.push_back(c.expert);
    return e;
  };
  CHECK(TopKOptions{}.group_fill == GroupFill::zero);  // Hugging Face's is the default
  CHECK(experts(GroupFill::zero) == std::vector<std::int32_t>{0, 2, 4});
  CHECK(experts(GroupFill::neg_inf) == std::vector<std::int32_t>{0, 2, 3});
  // the weights are the unbiased scores of the chosen experts, either way
  for (GroupFill f : {GroupFill::zero, GroupFill::neg_inf}) {
    o.group_fill = f;
    for (const auto& c : choices(topk_routing(L, o).plan, 0)) CHECK(c.weight == Approx(0.5).epsilon(1e-15));
  }
  CHECK(parse_group_fill("neg-inf") == GroupFill::neg_inf);
  CHECK(std::string(to_string(GroupFill::zero)) == "zero");
  CHECK_THROWS_NAMING(parse_group_fill("nan"), value_error, "nan");
}

TEST_CASE("topk router: the fast plan equals the dense oracle on random problems", "[routers][topk][property]") {
  auto& g = naive::rng();
  for (int trial = 0; trial < 300; ++trial) {
    INFO("trial " << trial);
    const index_t G = std::uniform_int_distribution<index_t>(1, 3)(g),
                  S = std::uniform_int_distribution<index_t>(0, 12)(g);
    const index_t groups = std::uniform_int_distribution<index_t>(1, 3)(g);
    const index_t E = groups * std::uniform_int_distribution<index_t>(groups > 1 ? 2 : 1, 4)(g);
    TopKOptions o;
    o.k = std::uniform_int_distribution<index_t>(1, E)(g);
    o.score = trial % 2 ? Score::sigmoid : Score::softmax;
    o.expert_groups = groups;
    if (groups > 1) {
      o.topk_expert_groups = std::uniform_int_distribution<index_t>((o.k + E / groups - 1) / (E / groups), groups)(g);
      o.group_fill = trial % 4 < 2 ? GroupFill::zero : GroupFill::neg_inf;
    }
    if (trial % 3 == 0) {
      const auto b = naive::random_tensor<double>(Shape{{"e", E}}, -0.5, 0.5);
      o.bias.assign(b.begin(), b.end());
    }
    o.normalize = static_cast<TopKNormalize>(trial % 3);
    o.priority = static_cast<Priority>((trial / 3) % 3);
    o.scale = trial % 5 == 0 ? 2.5 : 1.0;
    if (trial % 4 != 0) o.capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S + 2)(g));
    // coarse logits make ties common
    auto L = naive::random_tensor<double>(Shape{{"batch", G}, {"group", S}, {"experts", E}}, -2, 2);
    if (trial % 2 == 0)
      for (auto& v : L) v = std::round(v * 2) / 2;
    const auto r = topk_routing(L, o);
    const auto d = topk_routing_dense(L, o);
    check_plan_matches_dense(r.plan, d, 1e-12);
    CHECK(r.aux_loss == Approx(d.aux_loss).epsilon(1e-12).margin(1e-15));
    CHECK(r.z_loss == Approx(d.z_loss).epsilon(1e-12).margin(1e-15));
    // float agrees with double to float precision
    Tensor<float> Lf(L.shape());
    for (index_t i = 0; i < L.size(); ++i) Lf[i] = static_cast<float>(L[i]);
    if (trial % 2 == 1) {  // ties stay ties only on the coarse grid; skip those
      const auto rf = topk_routing(Lf, o);
      const auto df = topk_routing_dense(Lf, o);
      const auto cf = rf.plan.combine_tensor();
      for (index_t i = 0; i < cf.size(); ++i) REQUIRE(std::abs(cf[i] - df.combine[i]) <= 1e-6f);
    }
  }
}

TEST_CASE("topk router: bad options and logits are named", "[routers][topk][errors]") {
  const auto L = logits_of(1, 2, 4, {0, 1, 2, 3, 4, 5, 6, 7});
  TopKOptions o;
  o.k = 5;
  CHECK_THROWS_NAMING(topk_routing(L, o), value_error, "k = 5");
  o.k = 0;
  CHECK_THROWS_NAMING(topk_routing(L, o), value_error, "k = 0");
  o.k = 2;
  o.bias = {1, 2};
  CHECK_THROWS_NAMING(topk_routing(L, o), shape_error, "bias");
  o.bias = {0, 0, 0, std::nan("")};
  CHECK_THROWS_NAMING(topk_routing(L, o), value_error, "bias");
  o.bias.clear();
  o.expert_groups = 3;
  CHECK_THROWS_NAMING(topk_routing(L, o), value_error, "groups");
  o.expert_groups = 4;  // one expert per group: no top-2 per group
  CHECK_THROWS_NAMING(topk_routing(L, o), value_error, "groups");
  o.expert_groups = 2;
  o.topk_expert_groups = 3;
  CHECK_THROWS_NAMING(topk_routing(L, o), value_error, "topk_expert_groups");
  o.topk_expert_groups = 1;
  o.k = 3;  // one group of 2 cannot hold 3 choices
  CHECK_THROWS_NAMING(topk_routing(L, o), value_error, "topk_expert_groups");
  o = TopKOptions{};
  o.capacity = CapacitySpec::fixed(0);
  CHECK_THROWS_NAMING(topk_routing(L, o), value_error, "capacity");
  o = TopKOptions{};
  auto bad = L;
  bad[3] = std::nan("");
  CHECK_THROWS_NAMING(topk_routing(bad, o), value_error, "logits");
  bad[3] = HUGE_VAL;
  CHECK_THROWS_NAMING(topk_routing(bad, o), value_error, "logits");
  bad[3] = -HUGE_VAL;  // -inf: that expert cannot be chosen
  const auto r = topk_routing(bad, o);
  CHECK(choices(r.plan, 0)[0].expert == 2);
  CHECK(choices(r.plan, 0)[1].expert == 1);
  for (index_t e = 0; e < 4; ++e) bad[e] = -HUGE_VAL;
  CHECK_THROWS_NAMING(topk_routing(bad, o), value_error, "-inf");
  CHECK_THROWS_NAMING(topk_routing(rename(L, "experts", "exp"), o), shape_error, "experts");
}

TEST_CASE("auxiliary-loss-free balancing moves the bias toward the mean load", "[routers][topk]") {
  std::vector<double> bias{0, 0, 0, 0};
  update_selection_bias(bias, {10, 2, 4, 4}, 0.001);  // mean 5
  CHECK(bias == std::vector<double>{-0.001, 0.001, 0.001, 0.001});
  update_selection_bias(bias, {5, 5, 5, 5}, 0.001);  // balanced: unchanged
  CHECK(bias == std::vector<double>{-0.001, 0.001, 0.001, 0.001});
  CHECK_THROWS_AS(update_selection_bias(bias, {1, 2}, 0.1), shape_error);
  // closing the loop: the bias rebalances a skewed router over a few steps
  const auto L = naive::random_tensor<double>(Shape{{"batch", 1}, {"group", 256}, {"experts", 4}}, -1, 1);
  auto skew = L;
  for (index_t t = 0; t < 256; ++t) skew[t * 4] += 1.0;  // expert 0 favored
  TopKOptions o;
  o.k = 1;
  o.score = Score::sigmoid;
  o.bias.assign(4, 0.0);
  const auto first = topk_routing(skew, o).stats.tokens_per_expert;
  for (int step = 0; step < 200; ++step)
    update_selection_bias(o.bias, topk_routing(skew, o).stats.tokens_per_expert, 0.01);
  const auto last = topk_routing(skew, o).stats.tokens_per_expert;
  CHECK(last[0] < first[0]);
  CHECK(*std::max_element(last.begin(), last.end()) < *std::max_element(first.begin(), first.end()));
}
