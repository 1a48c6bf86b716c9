#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("truncated gating: hand-worked exhaustion rule", "[truncated]") {
  // 4 tokens, 2 experts, capacity 2; every token prefers expert 0.
  Tensor<double> gates(Shape::parse("group:4,experts:2"), {.9, .1, .8, .2, .7, .3, .6, .4});
  Top2Options o;
  o.capacity = CapacitySpec::fixed(2);
  // First choices: e0 <- t0 (slot 0), t1 (slot 1); t2, t3 dropped. count_1 = [2, 0].
  // use_rate = [(2+1)/4, (0+1)/4] = [.75, .25]; exhaustion = [(2-2)/.75, (2-0)/.25] = [0, 8].
  // Token s > 0 sees e0 exhausted; e1 never. Second choices: t0 -> argmax(.9-1, .1) = e1,
  // t1 -> argmax(.8-1-1, .2) = e1, t2 -> e1, t3 -> e1; slots 0, 1 kept, 2, 3 dropped.
  const auto dense = truncated_top2_gating_dense(gates, o);
  const auto fast = truncated_top2_gating(gates, o);
  auto w = [](double a, double b) { return a / (a + b + 1e-9); };
  Tensor<double> expect(dense.shape());
  expect.at({0, 0, 0}) = w(.9, .1);
  expect.at({0, 1, 0}) = w(.1, .9);
  expect.at({1, 0, 1}) = w(.8, .2);
  expect.at({1, 1, 1}) = w(.2, .8);
  CHECK(naive::all_close(dense, expect, 1e-12));
  CHECK(naive::all_close(fast.plan.combine_tensor(), expect, 1e-12));
  CHECK(fast.stats.first_kept == 2);
  CHECK(fast.stats.second_kept == 2);
}

TEMPLATE_TEST_CASE("truncated gating: fast equals dense on random inputs", "[truncated][property]", float, double) {
  for (int trial = 0; trial < 80; ++trial) {
    auto& g = naive::rng();
    const index_t S = std::uniform_int_distribution<index_t>(1, 30)(g);
    const index_t E = std::uniform_int_distribution<index_t>(1, 6)(g);
    const auto gates =
        softmax(naive::random_tensor<TestType>(Shape{{"batch", 2}, {"group", S}, {"experts", E}}, -3, 3), "experts");
    Top2Options o;
    o.capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S + 1)(g));
    INFO("trial " << trial);
    REQUIRE(naive::all_close(truncated_top2_gating(gates, o).plan.combine_tensor(),
                             truncated_top2_gating_dense(gates, o), 1e-6, 1e-6));
  }
}

TEST_CASE("truncated gating matches the numpy reference", "[truncated][fixtures]") {
  const auto cases = fixtures::cases("truncated");
  REQUIRE(cases.size() == 6);
  for (const auto& c : cases) {
    INFO(c.name);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      Top2Options o;
      o.capacity = CapacitySpec::fixed(c.integer("capacity"));
      const auto gates = c.load<T>("gates", {"batch", "group", "experts"});
      const auto want = c.load<T>("expected_combine", {"batch", "group", "experts", "expert_capacity"});
      const double tol = c.f64 ? 1e-12 : 1e-5;
      REQUIRE(naive::all_close(truncated_top2_gating_dense(gates, o), want, tol, tol));
      REQUIRE(naive::all_close(truncated_top2_gating(gates, o).plan.combine_tensor(), want, tol, tol));
    };
    if (c.f64) run(0.0);
    else run(0.0f);
  }
}

TEST_CASE("truncated gating ties: lowest or highest index, as the numpy transcription", "[truncated][fixtures][ties]") {
  index_t n = 0;
  for (const auto& c : fixtures::cases("ties")) {
    if (c.config.at("variant") != "truncated") continue;
    INFO(c.name);
    ++n;
    auto run = [&](auto zero) {
      using T = decltype(zero);
      Top2Options o;
      o.capacity = CapacitySpec::fixed(c.integer("capacity"));
      o.ties = parse_ties(c.config.at("ties"));
      const auto gates = c.load<T>("gates", {"batch", "group", "experts"});
      const auto want = c.load<T>("expected_combine", {"batch", "group", "experts", "expert_capacity"});
      const double tol = c.f64 ? 1e-12 : 1e-5;
      REQUIRE(naive::all_close(truncated_top2_gating_dense(gates, o), want, tol, tol));
      REQUIRE(naive::all_close(truncated_top2_gating(gates, o).plan.combine_tensor(), want, tol, tol));
    };
    if (c.f64) run(0.0);
    else run(0.0f);
  }
  CHECK(n == 8);
}
