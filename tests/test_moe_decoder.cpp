// The tiny MoE decoder of examples/: cached incremental decoding gives the
// same logits as running the full prefix, and beam search's scores are the
// model's own log-likelihoods of the sequences it returns.
#include "check.hpp"
#include "decoder/tiny_moe_decoder.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("tiny MoE decoder: cached step logits equal full-prefix logits", "[decoder]") {
  tiny::Config cfg;
  cfg.start_tokens = {3, 9};
  tiny::MoEDecoder<double> model(cfg);
  for (const Shape& rows : {Shape{{"batch", 2}}, Shape{{"batch", 2}, {"beam", 3}}}) {
    const index_t L = 10;
    const auto ids = naive::random_ints<std::int64_t>(rows.with(Dim("length", L)), 0, cfg.vocab - 1);
    const auto full = model.full_logits(ids);
    auto cache = model.empty_cache(rows);
    for (index_t step = 0; step < L; ++step) {
      const auto s = model.step_logits(step, ids, cache);
      REQUIRE(s.shape() == rows.with(Dim("vocab", cfg.vocab)));
      for (index_t r = 0; r < rows.num_elements(); ++r)
        for (index_t v = 0; v < cfg.vocab; ++v)
          REQUIRE(naive::close(s[r * cfg.vocab + v], full[(r * L + step) * cfg.vocab + v], 1e-10, 1e-10));
    }
  }
}

TEST_CASE("tiny MoE decoder: beam scores are the model's log-likelihoods", "[decoder][beam]") {
  tiny::Config cfg;
  cfg.start_tokens = {5, 23};
  tiny::MoEDecoder<double> model(cfg);
  const index_t B = 2, K = 3, L = 8;
  BeamLogitsFn<double> fn = [&](index_t step, const TensorView<const std::int64_t>& ids,
                                std::vector<Tensor<double>>& kv) { return model.step_logits(step, ids, kv); };
  BeamSearchOptions o;
  o.eos_id = cfg.vocab + 5;  // never produced: every row falls back to its alive beams
  const auto r = beam_search<double>(fn, Tensor<std::int64_t>(Shape{{"batch", B}, {"beam", K}, {"length", L}}), 0.6, o,
                                     model.empty_cache(Shape{{"batch", B}, {"beam", K}}));
  CHECK(r.steps == L);
  const auto lsm = log_softmax(model.full_logits(r.ids), "vocab");
  for (index_t row = 0; row < B * K; ++row) {
    double ll = 0;
    for (index_t p = 0; p < L; ++p) ll += lsm[(row * L + p) * cfg.vocab + r.ids[row * L + p]];
    CHECK(r.scores[row] == Approx(ll).epsilon(1e-9));
  }
  // beams are sorted best first within each row
  for (index_t b = 0; b < B; ++b)
    for (index_t k = 1; k < K; ++k) CHECK(r.scores[b * K + k - 1] >= r.scores[b * K + k]);
}
