#include <cmath>
#include <limits>
#include <optional>

#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {

/// logits = log(p), so that softmax(logits) = p.
Tensor<double> logits_of(const Shape& s, const std::vector<double>& p) {
  Tensor<double> t(s, p);
  for (auto& v : t) v = std::log(v);
  return t;
}

Top2Options options(index_t capacity) {
  Top2Options o;
  o.capacity = CapacitySpec::fixed(capacity);
  return o;
}

/// Fast and dense must agree exactly on the dense tensors (and loss).
template <class T>
void require_same(const RouterResult<T>& f, const DenseRouterResult<T>& d, double rtol) {
  REQUIRE(naive::all_close(f.plan.combine_tensor(), d.combine, rtol, rtol));
  REQUIRE(f.plan.dispatch_tensor().to_vector() == d.dispatch.to_vector());
  REQUIRE(naive::close(f.aux_loss, d.aux_loss, rtol, rtol));
  REQUIRE(f.stats.tokens_per_expert == d.stats.tokens_per_expert);
  REQUIRE(f.stats.first_kept == d.stats.first_kept);
  REQUIRE(f.stats.second_kept == d.stats.second_kept);
  REQUIRE(f.stats.first_wanted == d.stats.first_wanted);
  REQUIRE(f.stats.second_wanted == d.stats.second_wanted);
}

}  // namespace

TEST_CASE("top-2 gating, hand-worked: 2 groups, 6 tokens, 3 experts, capacity 2", "[top2]") {
  // Probabilities per token (group 1 has ties, broken toward the lower index).
  const Shape s = Shape::parse("batch:2,group:6,experts:3");
  const auto logits = logits_of(s, {.6,
                                    .3,
                                    .1,
                                    /**/ .5,
                                    .2,
                                    .3,
                                    /**/ .7,
                                    .1,
                                    .2,
                                    /**/ .2,
                                    .5,
                                    .3,
                                    /**/ .1,
                                    .2,
                                    .7,
                                    /**/ .4,
                                    .1,
                                    .5,
                                    /* group 1 */ .1,
                                    .8,
                                    .1,
                                    /**/ .3,
                                    .3,
                                    .4,
                                    /**/ .2,
                                    .6,
                                    .2,
                                    /**/ .25,
                                    .25,
                                    .5,
                                    /**/ .9,
                                    .05,
                                    .05,
                                    /**/ .1,
                                    .7,
                                    .2});
  // Worked by hand. Group 0: first choices e0 <- t0, t1 (t2 dropped: slot 2),
  // e1 <- t3, e2 <- t4, t5. Second choices start after the kept first ones:
  // t0 -> e1 slot 1 kept; t1, t2, t3 -> e2 slot 2 dropped; t4 -> e1 slot 2
  // dropped; t5 -> e0 slot 2 dropped. Group 1: first e1 <- t0, t2 (t5
  // dropped), e2 <- t1, t3, e0 <- t4; second t0 -> e0 slot 1 kept, the rest
  // land on slot 2 and are dropped. Gates are normalized before capacity:
  // w(a, b) = a / (a + b + 1e-9) for the first choice a and second choice b.
  auto w = [](double a, double b) { return a / (a + b + 1e-9); };
  Tensor<double> expect(s.with(Dim("expert_capacity", 2)));
  auto set = [&](index_t g, index_t t, index_t e, index_t c, double v) { expect.at({g, t, e, c}) = v; };
  set(0, 0, 0, 0, w(.6, .3));
  set(0, 0, 1, 1, w(.3, .6));
  set(0, 1, 0, 1, w(.5, .3));
  set(0, 3, 1, 0, w(.5, .3));
  set(0, 4, 2, 0, w(.7, .2));
  set(0, 5, 2, 1, w(.5, .4));
  set(1, 0, 1, 0, w(.8, .1));
  set(1, 0, 0, 1, w(.1, .8));
  set(1, 1, 2, 0, w(.4, .3));
  set(1, 2, 1, 1, w(.6, .2));
  set(1, 3, 2, 1, w(.5, .25));
  set(1, 4, 0, 0, w(.9, .05));
  // aux loss = mean_{g,e}(mean_s raw * mean_s mask_1) * 9
  //          = 9/6 * [(2.5*3 + 1.4*1 + 2.1*2) + (1.85*1 + 2.7*3 + 1.45*2)] / 36 = 1.08125
  const double loss = 1.08125;

  const auto f = top2_gating(logits, options(2));
  const auto d = top2_gating_dense(logits, options(2));
  CHECK(naive::all_close(f.plan.combine_tensor(), expect, 1e-12));
  CHECK(naive::all_close(d.combine, expect, 1e-12));
  CHECK(f.aux_loss == Approx(loss).epsilon(1e-12));
  CHECK(d.aux_loss == Approx(loss).epsilon(1e-12));
  for (index_t i = 0; i < expect.size(); ++i) CHECK(d.dispatch[i] == (expect[i] != 0 ? 1.0 : 0.0));
  // the plan itself
  CHECK(f.plan.taken == std::vector<std::int32_t>{2, 2, 2, /**/ 2, 2, 2});
  CHECK(f.plan.expert[2 * 2] == -1);  // group 0, token 2: first choice dropped
  CHECK(f.stats.first_wanted == 12);
  CHECK(f.stats.first_kept == 10);
  CHECK(f.stats.second_wanted == 12);
  CHECK(f.stats.second_kept == 2);
  CHECK(f.stats.tokens_per_expert == std::vector<index_t>{4, 4, 4});
  CHECK(f.stats.dropped_first() == Approx(2.0 / 12));
  CHECK(f.stats.fill() == Approx(12.0 / 12));
}

TEST_CASE("top-2 gating: policies, hand-worked on one token", "[top2]") {
  // one token, probabilities [.6, .3, .1]
  const auto logits = logits_of(Shape::parse("group:1,experts:3"), {.6, .3, .1});
  const double g2 = .3 / (.9 + 1e-9);
  auto second = [&](Top2Options o, GatingInputs<double> in = {}) {
    o.capacity = CapacitySpec::fixed(4);
    const auto r = top2_gating(logits, o, in);
    require_same(r, top2_gating_dense(logits, o, in), 1e-12);
    return r.plan.expert[1] >= 0;
  };
  Top2Options o;
  CHECK(second(o));
  o.policy = SecondPolicy::none;
  CHECK_FALSE(second(o));
  o.policy = SecondPolicy::threshold;
  o.threshold = g2 - 1e-6;
  CHECK(second(o));
  o.threshold = g2 + 1e-6;
  CHECK_FALSE(second(o));
  o.policy = SecondPolicy::random;
  o.threshold = 0.5;  // keep if u < g2 / 0.5 = 0.667
  GatingInputs<double> in;
  in.uniform = shared_view(Tensor<double>(Shape::parse("group:1"), {0.6}));
  CHECK(second(o, in));
  in.uniform = shared_view(Tensor<double>(Shape::parse("group:1"), {0.7}));
  CHECK_FALSE(second(o, in));
  // sampling: the Gumbel draws decide; the first expert can never be chosen again
  o.policy = SecondPolicy::sampling;
  GatingInputs<double> gs;
  gs.gumbel = shared_view(Tensor<double>(Shape::parse("group:1,experts:3"), {100, 0, 5}));
  auto r = top2_gating(
      logits,
      [&] {
        auto p = o;
        p.capacity = CapacitySpec::fixed(4);
        return p;
      }(),
      gs);
  CHECK(r.plan.expert[1] == 2);
  CHECK(r.plan.weight[1] == Approx(.1 / (.6 + .1 + 1e-9)));
}

TEST_CASE("top-2 gating: normalize after renormalizes the kept gates", "[top2]") {
  const auto logits = logits_of(Shape::parse("group:3,experts:2"), {.7, .3, .6, .4, .8, .2});
  Top2Options o = options(1);
  o.normalize = Normalize::after;
  const auto r = top2_gating(logits, o);
  require_same(r, top2_gating_dense(logits, o), 1e-12);
  // t0 -> e0 slot 0 (kept), second e1 slot 0 kept -> .7/(.7+.3), .3/(1)
  CHECK(r.plan.weight[0] == Approx(.7));
  CHECK(r.plan.weight[1] == Approx(.3));
  // t1: first e0 slot 1 dropped; second e1 slot 1 dropped -> nothing
  CHECK(r.plan.expert[2] == -1);
  CHECK(r.plan.expert[3] == -1);
  // with normalize after, a lone kept gate becomes 1
  o.capacity = CapacitySpec::fixed(3);
  o.policy = SecondPolicy::none;
  const auto r2 = top2_gating(logits, o);
  CHECK(r2.plan.weight[2] == Approx(1.0));
}

TEST_CASE("top-2 gating: importance 1 / 0.5 / 0", "[top2]") {
  const auto logits = logits_of(Shape::parse("group:3,experts:3"), {.5, .3, .2, .5, .3, .2, .5, .3, .2});
  GatingInputs<double> in;
  in.importance = shared_view(Tensor<double>(Shape::parse("group:3"), {1.0, 0.5, 0.0}));
  const auto o = options(3);
  const auto r = top2_gating(logits, o, in);
  require_same(r, top2_gating_dense(logits, o, in), 1e-12);
  // importance 1: two experts
  CHECK(r.plan.expert[0] == 0);
  CHECK(r.plan.expert[1] == 1);
  // importance 0.5: no first choice; its second choice is its top expert
  CHECK(r.plan.expert[2] == -1);
  CHECK(r.plan.expert[3] == 0);
  // importance 0: nothing
  CHECK(r.plan.expert[4] == -1);
  CHECK(r.plan.expert[5] == -1);
  // all-zero importance: no routing at all, and no balancing loss
  in.importance = shared_view(Tensor<double>(Shape::parse("group:3"), 0.0));
  const auto z = top2_gating(logits, o, in);
  require_same(z, top2_gating_dense(logits, o, in), 1e-12);
  for (auto e : z.plan.expert) CHECK(e == -1);
  CHECK(z.aux_loss == 0.0);
}

TEST_CASE("top-2 gating: capacity edge cases", "[top2][edge]") {
  const Shape s = Shape::parse("batch:2,group:7,experts:4");
  const auto logits = naive::random_tensor<double>(s);
  SECTION("capacity 1") {
    const auto o = options(1);
    const auto r = top2_gating(logits, o);
    require_same(r, top2_gating_dense(logits, o), 1e-12);
    for (auto f : r.plan.taken) CHECK(f <= 1);
  }
  SECTION("capacity larger than the group keeps every choice") {
    const auto o = options(20);
    const auto r = top2_gating(logits, o);
    require_same(r, top2_gating_dense(logits, o), 1e-12);
    CHECK(r.stats.first_kept == 14);
    CHECK(r.stats.second_kept == 14);
    CHECK(r.stats.dropped_first() == 0.0);
  }
  SECTION("all tokens choose one expert") {
    Tensor<double> l(s, 0.0);
    for (index_t i = 0; i < l.size(); i += 4) l[i] = 5.0;  // expert 0 first everywhere
    const auto o = options(3);
    const auto r = top2_gating(l, o);
    require_same(r, top2_gating_dense(l, o), 1e-12);
    CHECK(r.stats.first_kept == 6);  // 3 per group
    CHECK(r.plan.taken[0] == 3);
    CHECK(r.stats.second_kept == 6);  // ties -> expert 1 for all, 3 slots per group
    CHECK(r.plan.taken[1] == 3);
  }
  SECTION("a group of one token") {
    const auto l = naive::random_tensor<double>(Shape::parse("batch:3,group:1,experts:4"));
    const auto r = top2_gating(l, options(1));
    require_same(r, top2_gating_dense(l, options(1)), 1e-12);
    CHECK(r.stats.first_kept == 3);
    CHECK(r.stats.second_kept == 3);
  }
  SECTION("one expert: the second choice repeats it with weight 0") {
    const auto l = naive::random_tensor<double>(Shape::parse("group:3,experts:1"));
    const auto r = top2_gating(l, options(4));
    require_same(r, top2_gating_dense(l, options(4)), 1e-12);
    CHECK(r.plan.expert[1] == 0);
    CHECK(r.plan.weight[1] == 0.0);
    CHECK(r.plan.dispatch_tensor().at({0, 0, 3}) == 0.0);
  }
  SECTION("empty group and empty batch") {
    const auto l = Tensor<double>(Shape::parse("batch:2,group:0,experts:4"));
    const auto r = top2_gating(l, options(2));
    CHECK(r.aux_loss == 0.0);
    CHECK(r.plan.combine_tensor().size() == 0);
    require_same(r, top2_gating_dense(l, options(2)), 1e-12);
    const auto l0 = Tensor<double>(Shape::parse("batch:0,group:3,experts:4"));
    CHECK(top2_gating(l0, options(2)).plan.tokens() == 0);
  }
  SECTION("dims in another order and several batch dims") {
    const auto l = naive::random_tensor<double>(Shape::parse("experts:4,b1:2,group:5,b2:3"));
    const auto r = top2_gating(l, options(2));
    require_same(r, top2_gating_dense(l, options(2)), 1e-12);
    CHECK(r.plan.dense_shape() == Shape::parse("b1:2,b2:3,group:5,experts:4,expert_capacity:2"));
  }
}

TEST_CASE("top-2 gating: bad input names the dim or value", "[top2][errors]") {
  const auto l = naive::random_tensor<double>(Shape::parse("batch:2,group:3,experts:4"));
  Top2Options o = options(2);
  CHECK_THROWS_NAMING(top2_gating(naive::random_tensor<double>(Shape::parse("group:3,e:4")), o), shape_error,
                      "\"experts\"");
  CHECK_THROWS_NAMING(top2_gating(naive::random_tensor<double>(Shape::parse("g:3,experts:4")), o), shape_error,
                      "\"group\"");
  o.capacity = CapacitySpec::factor(0.0);  // from a factor which is no factor
  CHECK_THROWS_NAMING(top2_gating(l, o), value_error, "capacity_factor");
  o.capacity = CapacitySpec::factor(std::numeric_limits<double>::quiet_NaN());
  CHECK_THROWS_NAMING(top2_gating_dense(l, o), value_error, "capacity_factor");
  o = options(2);
  Tensor<double> bad = l;
  bad[5] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_NAMING(top2_gating(bad, o), value_error, "nan");
  bad[5] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_NAMING(top2_gating_dense(bad, o), value_error, "inf");
  GatingInputs<double> in;
  in.importance = shared_view(Tensor<double>(Shape::parse("batch:2,group:4")));
  CHECK_THROWS_NAMING(top2_gating(l, o, in), shape_error, "\"group\"");
  in.importance = shared_view(Tensor<double>(Shape::parse("batch:2")));
  CHECK_THROWS_NAMING(top2_gating(l, o, in), shape_error, "\"group\"");
  in = {};
  in.gumbel = shared_view(Tensor<double>(Shape::parse("batch:2,group:3")));
  CHECK_THROWS_NAMING(top2_gating(l, o, in), shape_error, "\"experts\"");
  CHECK_THROWS_NAMING(top2_gating(naive::random_tensor<double>(Shape::parse("group:3,experts:0")), o), value_error,
                      "\"experts\"");
  CHECK_THROWS_NAMING(parse_second_policy("best"), value_error, "best");
  MoEDims clash;
  clash.capacity = "group";
  CHECK_THROWS_NAMING(top2_gating(l, o, {}, clash), shape_error, "\"group\"");
}

TEST_CASE("top-2 gating: seeded draws are reproducible and equal explicit draws", "[top2][random]") {
  const auto l = naive::random_tensor<double>(Shape::parse("batch:2,group:9,experts:5"));
  Top2Options o = options(3);
  o.seed = 99;
  for (auto policy : {SecondPolicy::random, SecondPolicy::sampling}) {
    o.policy = policy;
    const auto a = top2_gating(l, o), b = top2_gating(l, o);
    CHECK(a.plan.combine_tensor().to_vector() == b.plan.combine_tensor().to_vector());
    GatingInputs<double> in;
    if (policy == SecondPolicy::random)
      in.uniform = shared_view(Rng(99).uniform<double>(Shape::parse("batch:2,group:9")));
    else in.gumbel = shared_view(Rng(99).gumbel<double>(l.shape()));
    CHECK(top2_gating(l, o, in).plan.combine_tensor().to_vector() == a.plan.combine_tensor().to_vector());
  }
}

TEMPLATE_TEST_CASE("sparse gating equals the dense formulation on random shapes and options", "[top2][property]", float,
                   double) {
  for (int trial = 0; trial < 150; ++trial) {
    auto& g = naive::rng();
    const index_t B = std::uniform_int_distribution<index_t>(1, 3)(g);
    const index_t S = std::uniform_int_distribution<index_t>(1, 24)(g);
    const index_t E = std::uniform_int_distribution<index_t>(1, 6)(g);
    const auto l = naive::random_tensor<TestType>(Shape{{"batch", B}, {"group", S}, {"experts", E}}, -3, 3);
    Top2Options o;
    o.capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S + 2)(g));
    o.policy = static_cast<SecondPolicy>(trial % 5);
    o.normalize = trial % 2 ? Normalize::after : Normalize::before;
    o.second_place_loss = trial % 3 == 0;
    o.threshold = 0.25;
    o.seed = static_cast<std::uint64_t>(trial);
    GatingInputs<TestType> in;
    Tensor<TestType> imp(Shape{{"batch", B}, {"group", S}});  // (outlives the view in `in`)
    if (trial % 4 == 1) {
      for (auto& v : imp) v = static_cast<TestType>(std::uniform_int_distribution<int>(0, 2)(g)) / TestType(2);
      in.importance = imp;
    }
    INFO("trial " << trial);
    require_same(top2_gating(l, o, in), top2_gating_dense(l, o, in),
                 std::is_same<TestType, float>::value ? 1e-6 : 1e-12);
  }
}

TEST_CASE("top-2 gating matches the numpy reference (tests/fixtures/moe)", "[top2][fixtures]") {
  const auto cases = fixtures::cases("gate");
  REQUIRE(cases.size() == 40);
  for (const auto& c : cases) {
    INFO(c.name);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      Top2Options o;
      o.capacity = CapacitySpec::fixed(c.integer("capacity"));
      o.policy = parse_second_policy(c.config.at("policy"));
      o.threshold = std::stod(c.config.at("threshold"));
      o.normalize = c.config.at("normalize") == "after" ? Normalize::after : Normalize::before;
      o.second_place_loss = c.integer("second_place_loss") != 0;
      const std::vector<std::string> gse{"batch", "group", "experts"}, gs{"batch", "group"};
      GatingInputs<T> in;
      if (c.has("importance")) in.importance = shared_view(c.load<T>("importance", gs));
      if (c.has("uniform")) in.uniform = shared_view(c.load<T>("uniform", gs));
      if (c.has("gumbel")) in.gumbel = shared_view(c.load<T>("gumbel", gse));
      const auto logits = c.load<T>("logits", gse);
      const std::vector<std::string> gsec{"batch", "group", "experts", "expert_capacity"};
      const auto combine = c.load<T>("expected_combine", gsec);
      const auto dispatch = c.load<T>("expected_dispatch", gsec);
      const T loss = c.load<T>("expected_aux_loss", {}).item();
      const double tol = c.f64 ? 1e-12 : 1e-5;
      const auto f = top2_gating(logits, o, in);
      const auto d = top2_gating_dense(logits, o, in);
      REQUIRE(naive::all_close(f.plan.combine_tensor(), combine, tol, tol));
      REQUIRE(naive::all_close(d.combine, combine, tol, tol));
      REQUIRE(f.plan.dispatch_tensor().to_vector() == dispatch.to_vector());
      REQUIRE(d.dispatch.to_vector() == dispatch.to_vector());
      REQUIRE(naive::close(f.aux_loss, loss, tol, tol));
      REQUIRE(naive::close(d.aux_loss, loss, tol, tol));
    };
    if (c.f64) run(0.0);
    else run(0.0f);
  }
}

TEST_CASE("top-2 gating ties: lowest or highest index, as the numpy transcription", "[top2][fixtures][ties]") {
  // Hand-worked: a zero-initialised router ties every expert. Lowest: first
  // choice 0, second 1; highest (Mesh TF's old top_1): first 3, second 2.
  Top2Options o;
  o.capacity = CapacitySpec::fixed(4);
  const Tensor<double> zeros(Shape{{"batch", 1}, {"group", 2}, {"experts", 4}}, 0.0);
  for (const Ties t : {Ties::lowest, Ties::highest}) {
    o.ties = t;
    const auto f = top2_gating(zeros, o);
    const auto d = top2_gating_dense(zeros, o);
    const index_t first = t == Ties::lowest ? 0 : 3, second = t == Ties::lowest ? 1 : 2;
    for (index_t s = 0; s < 2; ++s) {
      CHECK(f.plan.expert[detail::uz(2 * s)] == first);
      CHECK(f.plan.expert[detail::uz(2 * s + 1)] == second);
      CHECK(f.plan.slot[detail::uz(2 * s)] == s);
      CHECK(d.combine.at({0, s, first, s}) == Approx(0.5));
      CHECK(d.combine.at({0, s, second, s}) == Approx(0.5));
    }
  }
  CHECK(parse_ties("highest") == Ties::highest);
  CHECK_THROWS_NAMING(parse_ties("middle"), value_error, "middle");

  const auto cases = fixtures::cases("ties");
  REQUIRE(cases.size() == 16);
  for (const auto& c : cases) {
    if (c.config.at("variant") != "gate") continue;
    INFO(c.name);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      Top2Options opt;
      opt.capacity = CapacitySpec::fixed(c.integer("capacity"));
      opt.ties = parse_ties(c.config.at("ties"));
      const std::vector<std::string> gsec{"batch", "group", "experts", "expert_capacity"};
      const auto logits = c.load<T>("logits", {"batch", "group", "experts"});
      const auto combine = c.load<T>("expected_combine", gsec);
      const double tol = c.f64 ? 1e-12 : 1e-5;
      const auto f = top2_gating(logits, opt);
      const auto d = top2_gating_dense(logits, opt);
      REQUIRE(naive::all_close(f.plan.combine_tensor(), combine, tol, tol));
      REQUIRE(naive::all_close(d.combine, combine, tol, tol));
      REQUIRE(f.plan.dispatch_tensor().to_vector() == c.load<T>("expected_dispatch", gsec).to_vector());
      REQUIRE(naive::close(f.aux_loss, c.load<T>("expected_aux_loss", {}).item(), tol, tol));
    };
    if (c.f64) run(0.0);
    else run(0.0f);
  }
}

TEST_CASE("top-2 gating without a capacity sizes it from the factor for the actual group", "[top2][capacity]") {
  // The old silent default, C = 4, dropped most first choices on S = 1024,
  // E = 16. Now: Mesh TF's rule with cf = 1.25, C = max(min(S, int(S cf / E)), 4).
  const Top2Options d;
  CHECK(d.capacity.kind == CapacitySpec::Kind::factor);
  CHECK(d.capacity.capacity_factor == 1.25);
  CHECK(d.capacity.rule == CapacityRule::mtf);
  for (const index_t S : {1, 3, 64, 1024}) {
    const auto l = naive::random_tensor<float>(Shape{{"batch", 2}, {"group", S}, {"experts", 16}});
    const index_t want = mtf_capacity(S, 16, 1.25);
    CHECK(d.capacity.slots(S, 16, 2) == want);
    const auto f = top2_gating(l, d);
    const auto g = top2_gating_dense(l, d);
    CHECK(f.plan.capacity == Dim("expert_capacity", want));
    CHECK(g.combine.shape().size_of("expert_capacity") == want);
    Top2Options fixed;
    fixed.capacity = CapacitySpec::fixed(want);
    CHECK(f.plan.combine_tensor().to_vector() == top2_gating(l, fixed).plan.combine_tensor().to_vector());
  }
  CHECK(d.capacity.slots(1024, 16, 2) == 80);
  // Another rule and factor.
  Top2Options o;
  o.capacity = CapacitySpec::factor(2.0, CapacityRule::lingvo);
  CHECK(o.capacity.slots(100, 16, 2) == lingvo_capacity(100, 16, 2.0));
  // A fixed capacity is that capacity.
  o.capacity = CapacitySpec::fixed(7);
  CHECK(o.capacity.slots(100, 16, 2) == 7);
}

TEST_CASE("the routing plan never holds a G*S*E*C tensor", "[top2][memory]") {
  const index_t G = 4, S = 1024, E = 16, C = 160;
  const auto l = naive::random_tensor<float>(Shape{{"batch", G}, {"group", S}, {"experts", E}});
  Top2Options o;
  o.capacity = CapacitySpec::fixed(C);
  const auto r = top2_gating(l, o);
  // entries: 2 per token (expert, slot, weight); slots: G*E*C entry ids; fill: G*E
  const std::size_t bound = static_cast<std::size_t>(G * S * 2 * (4 + 4 + 4) + G * E * C * 8 + G * E * 4);
  CHECK(r.plan.bytes() <= bound);
  CHECK(r.plan.bytes() * 50 < static_cast<std::size_t>(G * S * E * C) * sizeof(float));
}

TEST_CASE("top-2 gating: -inf logits mask an expert (never chosen first, weight 0 second)", "[top2][edge]") {
  const double ninf = -std::numeric_limits<double>::infinity();
  auto l = naive::random_tensor<double>(Shape::parse("batch:2,group:6,experts:4"));
  for (index_t t = 0; t < 12; ++t) l[t * 4 + 2] = ninf;  // expert 2 masked everywhere
  l[5 * 4 + 0] = l[5 * 4 + 3] = ninf;                    // token 5: only expert 1 is finite
  for (auto policy : {SecondPolicy::all, SecondPolicy::threshold, SecondPolicy::random, SecondPolicy::sampling}) {
    Top2Options o = options(4);
    o.policy = policy;
    const auto r = top2_gating(l, o);
    require_same(r, top2_gating_dense(l, o), 1e-12);
    CHECK(std::isfinite(r.aux_loss));
    for (index_t t = 0; t < 12; ++t) {
      CHECK(r.plan.expert[static_cast<std::size_t>(2 * t)] != 2);
      for (int j = 0; j < 2; ++j) {
        const auto i = static_cast<std::size_t>(2 * t + j);
        CHECK(std::isfinite(r.plan.weight[i]));
        if (r.plan.expert[i] == 2) CHECK(r.plan.weight[i] == 0.0);
      }
    }
    // token 5 has one finite logit: its second choice carries no weight
    CHECK(r.plan.weight[11] == 0.0);
  }
}

TEST_CASE("Mesh TF's max_experts top-2 gating matches the numpy transcription", "[top2][mtf_v1][fixtures]") {
  const auto cases = fixtures::cases("mtf_v1");
  REQUIRE(cases.size() == 16);
  for (const auto& c : cases) {
    INFO(c.name);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      Top2Options o;
      o.capacity = CapacitySpec::fixed(c.integer("capacity"));
      o.policy = parse_second_policy(c.config.at("policy"));
      o.threshold = std::stod(c.config.at("threshold"));
      o.second_place_loss = c.integer("second_place_loss") != 0;
      o.ties = parse_ties(c.config.at("ties"));
      const std::vector<std::string> gs{"batch", "group"};
      const std::vector<std::string> gsec{"batch", "group", "experts", "expert_capacity"};
      std::optional<Tensor<T>> me, u;
      if (c.has("max_experts")) me = c.load<T>("max_experts", gs);
      if (c.has("uniform")) u = c.load<T>("uniform", gs);
      const auto logits = c.load<T>("logits", {"batch", "group", "experts"});
      const auto combine = c.load<T>("expected_combine", gsec);
      const T loss = c.load<T>("expected_aux_loss", {}).item();
      const double tol = c.f64 ? 1e-12 : 1e-5;
      const auto f = top2_gating_mtf_v1(logits, o, me, u);
      const auto d = top2_gating_mtf_v1_dense(logits, o, me, u);
      REQUIRE(naive::all_close(f.plan.combine_tensor(), combine, tol, tol));
      REQUIRE(naive::all_close(d.combine, combine, tol, tol));
      REQUIRE(f.plan.dispatch_tensor().to_vector() == c.load<T>("expected_dispatch", gsec).to_vector());
      REQUIRE(naive::close(f.aux_loss, loss, tol, tol));
      REQUIRE(naive::close(d.aux_loss, loss, tol, tol));
      CHECK(f.stats.tokens_per_expert == d.stats.tokens_per_expert);
      CHECK(f.stats.first_kept == d.stats.first_kept);
      CHECK(f.stats.second_wanted == d.stats.second_wanted);
    };
    if (c.f64) run(0.0);
    else run(0.0f);
  }
}

TEST_CASE("Mesh TF's max_experts top-2 gating: fast equals dense on edge cases", "[top2][mtf_v1][property]") {
  for (int trial = 0; trial < 40; ++trial) {
    auto& g = naive::rng();
    const index_t G = std::uniform_int_distribution<index_t>(1, 3)(g),
                  S = std::uniform_int_distribution<index_t>(1, 12)(g);
    const index_t E = std::uniform_int_distribution<index_t>(1, 5)(g);
    const Shape gs{{"batch", G}, {"group", S}};
    // integer logits give ties; some trials all-zero (a fresh router)
    auto l = naive::random_ints<double>(gs.with(Dim("experts", E)), -1, 1);
    if (trial % 7 == 0) l.fill(0.0);
    Top2Options o;
    o.capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S + 2)(g));  // C > S too
    o.policy = static_cast<SecondPolicy>(trial % 4);  // all, none, threshold, random
    o.second_place_loss = trial % 2 == 0;
    o.ties = trial % 3 == 0 ? Ties::highest : Ties::lowest;
    o.seed = static_cast<std::uint64_t>(trial);
    Tensor<double> me = naive::random_ints<double>(gs, 0, 3);
    if (trial % 5 == 0) me.fill(0.0);  // every token padding
    INFO("trial " << trial);
    const OptionalView<double> max_experts = trial % 2 ? OptionalView<double>(me) : std::nullopt;
    const auto f = top2_gating_mtf_v1(l, o, max_experts);
    const auto d = top2_gating_mtf_v1_dense(l, o, max_experts);
    REQUIRE(naive::all_close(f.plan.combine_tensor(), d.combine, 1e-12, 1e-12));
    REQUIRE(naive::close(f.aux_loss, d.aux_loss, 1e-12, 1e-12));
    REQUIRE(f.stats.tokens_per_expert == d.stats.tokens_per_expert);
    if (trial % 5 == 0 && trial % 2) {
      for (auto v : d.combine) REQUIRE(v == 0.0);
      CHECK(f.aux_loss == 0.0);
    }
  }
  const auto l = naive::random_tensor<double>(Shape::parse("batch:1,group:4,experts:3"));
  Top2Options o;
  o.capacity = CapacitySpec::fixed(2);
  o.policy = SecondPolicy::sampling;
  CHECK_THROWS_NAMING(top2_gating_mtf_v1(l, o), value_error, "sampling");
  o.policy = SecondPolicy::all;
  const Tensor<double> bad(Shape::parse("batch:1,group:5"));
  CHECK_THROWS_NAMING(top2_gating_mtf_v1(l, o, bad), shape_error, "max_experts");
  Tensor<double> nan(Shape::parse("batch:1,group:4"));
  nan[1] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_NAMING(top2_gating_mtf_v1_dense(l, o, nan), value_error, "max_experts");
}
