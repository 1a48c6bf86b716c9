#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("noisy top-k gating matches the numpy transcription of t2t", "[noisy][fixtures]") {
  const auto cases = fixtures::cases("noisy");
  REQUIRE(cases.size() == 5);
  for (const auto& c : cases) {
    INFO(c.name);
    const auto x = c.load<double>("x", {"batch", "model"});
    const auto wg = c.load<double>("w_gate", {"model", "experts"});
    std::optional<Tensor<double>> wn;
    if (c.has("w_noise")) wn = c.load<double>("w_noise", {"model", "experts"});
    NoisyTopKOptions o;
    o.k = c.integer("k");
    o.train = c.integer("train") != 0;
    const auto normal = c.load<double>("normal", {"batch", "experts"});
    const auto r = noisy_topk_gating(x, wg, wn, o, normal);
    CHECK(naive::all_close(r.gates, c.load<double>("expected_gates", {"batch", "experts"}), 1e-12));
    CHECK(naive::all_close(r.load, c.load<double>("expected_load", {"experts"}), 1e-12, 1e-12));
    CHECK(naive::all_close(r.importance, c.load<double>("expected_importance", {"experts"}), 1e-12));
    CHECK(r.aux_loss(0.01) == Approx(c.load<double>("expected_loss", {}).item()).epsilon(1e-10));
  }
}

TEST_CASE("noisy top-k gating: properties and errors", "[noisy]") {
  const auto x = naive::random_tensor<double>(Shape::parse("b1:3,b2:4,model:5"));
  const auto wg = naive::random_tensor<double>(Shape::parse("model:5,experts:6"));
  const auto wn = naive::random_tensor<double>(Shape::parse("model:5,experts:6"));
  NoisyTopKOptions o;
  o.k = 3;
  const auto r = noisy_topk_gating(x, wg, wn, o);
  CHECK(r.gates.shape() == Shape::parse("b1:3,b2:4,experts:6"));
  for (index_t row = 0; row < 12; ++row) {
    double s = 0;
    int nz = 0;
    for (index_t e = 0; e < 6; ++e) s += r.gates[row * 6 + e], nz += r.gates[row * 6 + e] > 0;
    CHECK(s == Approx(1.0));
    CHECK(nz == 3);
  }
  for (auto v : r.load) CHECK(v >= 0.0);
  // seeded: same seed, same gates; explicit draws equal seeded draws
  CHECK(noisy_topk_gating(x, wg, wn, o).gates.to_vector() == r.gates.to_vector());
  const auto draws = Rng(o.seed).normal<double>(r.gates.shape());
  CHECK(noisy_topk_gating(x, wg, wn, o, draws).gates.to_vector() == r.gates.to_vector());
  // eval: no noise -> the clean top k
  o.train = false;
  const auto ev = noisy_topk_gating(x, wg, wn, o);
  const auto clean = noisy_topk_gating(x, wg, std::nullopt, o);
  CHECK(naive::all_close(ev.gates, clean.gates, 1e-12));
  o.k = 7;
  CHECK_THROWS_NAMING(noisy_topk_gating(x, wg, wn, o), value_error, "\"experts\"");
  o.k = 0;
  CHECK_THROWS_AS(noisy_topk_gating(x, wg, wn, o), value_error);
}
