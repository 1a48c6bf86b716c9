#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {
/// Logits that depend only on (step, beam), as in tensor2tensor's tests.
BeamLogitsFn<double> table_fn(const std::vector<std::vector<std::vector<double>>>& probs, index_t batch = 1) {
  return [probs, batch](index_t i, const TensorView<const std::int64_t>& ids, std::vector<Tensor<double>>&) {
    const auto& step = probs[detail::uz(std::min<index_t>(i, static_cast<index_t>(probs.size()) - 1))];
    const index_t K = ids.shape()[1].size, V = static_cast<index_t>(step[0].size());
    Tensor<double> l(Shape{{"batch", batch}, {"beam", K}, {"vocab", V}});
    for (index_t b = 0; b < batch; ++b)
      for (index_t k = 0; k < K; ++k)
        for (index_t v = 0; v < V; ++v) l[(b * K + k) * V + v] = std::log(step[detail::uz(k)][detail::uz(v)]);
    return l;
  };
}
}  // namespace

TEST_CASE("beam search reproduces tensor2tensor's published example", "[beam]") {
  // beam 2, vocab 3, alpha 0: finished [2,1] with p .4 and [2,0,1] with p .288
  const auto fn =
      table_fn({{{.1, .1, .8}, {.1, .1, .8}}, {{.4, .5, .1}, {.2, .4, .4}}, {{.05, .9, .05}, {.4, .4, .2}}});
  Tensor<std::int64_t> init(Shape::parse("batch:1,beam:2,length:5"));
  const auto r = beam_search<double>(fn, init, 0.0);
  CHECK(r.ids.to_vector() == std::vector<std::int64_t>{2, 1, 0, 0, 0, /**/ 2, 0, 1, 0, 0});
  CHECK(std::exp(r.scores[0]) == Approx(.4));
  CHECK(std::exp(r.scores[1]) == Approx(.288));
  CHECK(r.steps == 3);  // the termination rule stops it after the third step
  // without stop_early it runs to the length; the finished set is unchanged
  BeamSearchOptions o;
  o.stop_early = false;
  const auto full = beam_search<double>(fn, init, 0.0, o);
  CHECK(full.steps == 5);
  CHECK(std::exp(full.scores[0]) == Approx(.4));
  // decode_length caps the steps
  o.decode_length = 2;
  CHECK(beam_search<double>(fn, init, 0.0, o).steps == 2);
}

TEST_CASE("beam search: length penalty, never-finishing rows, states reordered", "[beam]") {
  // EOS (1) never makes the top 2 * beam = 4 candidates (vocab 6), so no row
  // finishes and both fall back to their alive beams and log-probs.
  const auto fn = table_fn({{{.3, 1e-9, .25, .2, .15, .1}, {.3, 1e-9, .25, .2, .15, .1}}}, 2);
  Tensor<std::int64_t> init(Shape::parse("batch:2,beam:2,length:3"));
  const auto r = beam_search<double>(fn, init, 0.6);
  CHECK(r.steps == 3);
  CHECK(r.ids.to_vector() == std::vector<std::int64_t>{0, 0, 0, 0, 0, 2, /**/ 0, 0, 0, 0, 0, 2});
  CHECK(r.scores[0] == Approx(3 * std::log(.3)));  // alive log-probs, not penalized scores
  CHECK(r.scores[1] == Approx(2 * std::log(.3) + std::log(.25)));
  // with EOS likely, the finished scores carry the length penalty ((5 + 1) / 6)^alpha = 1 at step 0
  const auto eos = table_fn({{{.2, .7, .1}, {.2, .7, .1}}});
  const auto e = beam_search<double>(eos, Tensor<std::int64_t>(Shape::parse("batch:1,beam:2,length:3")), 0.6);
  CHECK(e.ids.to_vector()[0] == 1);
  CHECK(e.scores[0] == Approx(std::log(.7)));
}

TEST_CASE("beam search reorders caller states with the surviving beams", "[beam]") {
  // The state of a beam is a hash of its prefix, written by the logits
  // function at step i from ids[.., 0..i-1]. After the beams are reordered, at
  // step i + 1 every beam must carry the hash of its own (new) prefix up to
  // position i - 1: exactly what a KV cache needs.
  const index_t B = 2, K = 3, L = 6, V = 5;
  auto prefix_hash = [&](const TensorView<const std::int64_t>& ids, index_t row, index_t upto) {
    double h = 0;
    for (index_t p = 0; p < upto; ++p) h = h * 7 + static_cast<double>(ids[row * L + p] + 1);
    return h;
  };
  index_t checked = 0;
  BeamLogitsFn<double> fn = [&](index_t i, const TensorView<const std::int64_t>& ids, std::vector<Tensor<double>>& st) {
    for (index_t row = 0; row < B * K; ++row) {
      if (i > 0) {
        REQUIRE(st[0][row] == prefix_hash(ids, row, i - 1));
        ++checked;
      }
      st[0][row] = prefix_hash(ids, row, i);
    }
    Tensor<double> l(Shape{{"batch", B}, {"beam", K}, {"vocab", V}});
    for (index_t row = 0; row < B * K; ++row)
      for (index_t v = 0; v < V; ++v)  // logits that depend on the prefix, so beams reshuffle
        l[row * V + v] =
            std::sin(prefix_hash(ids, row, i) * 0.37 + static_cast<double>(v) * 1.3 + static_cast<double>(i));
    return l;
  };
  BeamSearchOptions o;
  o.stop_early = false;
  o.eos_id = 4;
  const auto r = beam_search<double>(fn, Tensor<std::int64_t>(Shape{{"batch", B}, {"beam", K}, {"length", L}}), 0.6, o,
                                     {Tensor<double>(Shape{{"batch", B}, {"beam", K}, {"one", 1}})});
  CHECK(r.steps == L);
  CHECK(checked == (L - 1) * B * K);
  CHECK_THROWS_NAMING(beam_search<double>(fn, Tensor<std::int64_t>(Shape{{"batch", B}, {"beam", K}, {"length", L}}),
                                          0.6, o, {Tensor<double>(Shape{{"beam", K}, {"batch", B}})}),
                      shape_error, "state");
}

TEST_CASE("is_finished follows Mesh TF's rule", "[beam]") {
  const Shape bk = Shape::parse("batch:2,beam:2");
  Tensor<double> alive(bk, {-1.0, -2.0, -1.5, -3.0});
  Tensor<double> fin(bk, {-0.5, -0.9, -1.2, -1e7});
  Tensor<bool> flags(bk, {true, true, true, false});
  // alpha 0: bound = alive[:, 0]; lowest finished: row 0 -0.9 > -1, row 1 -1.2 > -1.5 -> met -> stop
  CHECK_FALSE(is_finished<double>(0, 10, alive, fin, flags, 0.0));
  // a row with nothing finished counts as -1e7 -> not met -> continue
  Tensor<bool> none(bk, {true, true, false, false});
  CHECK(is_finished<double>(0, 10, alive, fin, none, 0.0));
  // past decode_length: stop either way
  CHECK_FALSE(is_finished<double>(10, 10, alive, fin, none, 0.0));
  CHECK(is_finished<double>(3, 10, alive, fin, flags, 0.0, /*stop_early=*/false));
  // with alpha the alive bound is divided by ((5 + decode_length) / 6)^alpha
  Tensor<double> a2(bk, {-2.0, -9.0, -2.0, -9.0});
  Tensor<double> f2(bk, {-1.5, -9.0, -1.5, -9.0});
  Tensor<bool> fl2(bk, {true, false, true, false});
  CHECK(is_finished<double>(0, 10, a2, f2, fl2, 1.0));        // -2 / 2.5 = -0.8 > -1.5: not met
  CHECK_FALSE(is_finished<double>(0, 10, a2, f2, fl2, 0.0));  // -2 < -1.5: met
  CHECK_THROWS_AS(is_finished<double>(0, 10, a2, Tensor<double>(Shape::parse("batch:2")), fl2, 0.0), shape_error);
}

TEST_CASE("beam search errors", "[beam][errors]") {
  const auto fn = table_fn({{{.5, .5}, {.5, .5}}});
  CHECK_THROWS_NAMING(beam_search<double>(fn, Tensor<std::int64_t>(Shape::parse("batch:1,length:3")), 0.0), shape_error,
                      "[batch, beam, length]");
  const auto bad_vocab = table_fn({{{1.0}, {1.0}}});
  CHECK_THROWS_NAMING(
      beam_search<double>(bad_vocab, Tensor<std::int64_t>(Shape::parse("batch:1,beam:2,length:3")), 0.0), shape_error,
      "vocab");
  CHECK_THROWS_AS(beam_search<double>(fn, Tensor<std::int64_t>(Shape::parse("batch:1,beam:2,length:3")),
                                      std::numeric_limits<double>::infinity()),
                  value_error);
  // Finite alphas whose length penalty overflows or vanishes (NaN scores).
  const Tensor<std::int64_t> init(Shape::parse("batch:1,beam:2,length:3"));
  CHECK_THROWS_NAMING(beam_search<double>(fn, init, 1e99), value_error, "length penalty");
  CHECK_THROWS_NAMING(beam_search<double>(fn, init, -1e99), value_error, "length penalty");
  // ((5 + 3) / 6)^1000 = e^288 fits a double but not a float.
  const BeamLogitsFn<float> fn32 = [](index_t, const TensorView<const std::int64_t>& ids, std::vector<Tensor<float>>&) {
    return Tensor<float>(Shape{ids.shape()[0], ids.shape()[1], Dim{"vocab", 2}}, std::log(0.5f));
  };
  CHECK_THROWS_NAMING(beam_search<float>(fn32, init, 1000.f), value_error, "length penalty");
  CHECK_NOTHROW(beam_search<double>(fn, init, 1000.0));
  CHECK_NOTHROW(beam_search<double>(fn, init, 100.0));
}

TEST_CASE("beam search matches the numpy transcription of Mesh TF on bigram models", "[beam][fixtures]") {
  const auto cases = fixtures::cases("beam", "decoding");
  REQUIRE(cases.size() == 5);
  for (const auto& c : cases) {
    INFO(c.name);
    const auto T = c.load<double>("transitions", {"prev", "vocab"});
    const auto start = c.load<std::int64_t>("start", {"batch"});
    const index_t B = c.integer("batch"), K = c.integer("beam"), L = c.integer("length"), V = T.size_of("vocab");
    BeamLogitsFn<double> fn = [&](index_t i, const TensorView<const std::int64_t>& ids, std::vector<Tensor<double>>&) {
      Tensor<double> l(Shape{{"batch", B}, {"beam", K}, {"vocab", V}});
      for (index_t b = 0; b < B; ++b)
        for (index_t k = 0; k < K; ++k) {
          const std::int64_t prev = i == 0 ? start[b] : ids[(b * K + k) * L + i - 1];
          std::copy_n(T.data() + prev * V, V, l.data() + (b * K + k) * V);
        }
      return l;
    };
    BeamSearchOptions o;
    o.stop_early = c.integer("stop_early") != 0;
    o.decode_length = c.integer("decode_length");
    const auto r = beam_search<double>(fn, Tensor<std::int64_t>(Shape{{"batch", B}, {"beam", K}, {"length", L}}),
                                       std::stod(c.config.at("alpha")), o);
    CHECK(r.ids.to_vector() == c.load<std::int64_t>("expected_ids", {"batch", "beam", "length"}).to_vector());
    CHECK(naive::all_close(r.scores, c.load<double>("expected_scores", {"batch", "beam"}), 1e-12, 1e-12));
    CHECK(r.steps == c.load<std::int64_t>("expected_steps", {}).item());
  }
}
