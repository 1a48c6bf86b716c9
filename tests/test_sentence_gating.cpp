#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("sentence embeddings: hand-worked, ids global over groups, 0 is padding", "[sentence]") {
  Tensor<double> x(Shape::parse("batch:2,group:3,model:1"), {1, 3, 10, /**/ 5, 7, 9});
  Tensor<std::int32_t> seg(Shape::parse("batch:2,group:3"), {1, 1, 0, /**/ 2, 1, 2});
  const auto e = sentence_embeddings(x, seg);
  // segment 1 = {1, 3, 7} (both groups) -> 11/3; segment 2 = {5, 9} -> 7; padding -> 0
  CHECK(naive::all_close(e, Tensor<double>(x.shape(), {11. / 3, 11. / 3, 0, 7, 11. / 3, 7}), 1e-12));
  // lingvo: with N = 6 tokens, id 6 is padding as well; 7 is out of range.
  const Tensor<std::int32_t> pad(Shape::parse("batch:2,group:3"), {1, 1, 0, /**/ 2, 1, 6});
  CHECK(naive::all_close(sentence_embeddings(x, pad), Tensor<double>(x.shape(), {11. / 3, 11. / 3, 0, 5, 11. / 3, 0}),
                         1e-12));
  CHECK_THROWS_NAMING(sentence_embeddings(x, Tensor<std::int32_t>(Shape::parse("batch:2,group:3"), {0, 0, 0, 0, 0, 7})),
                      value_error, "segment id 7");
  CHECK_THROWS_NAMING(
      sentence_embeddings(x, Tensor<std::int32_t>(Shape::parse("batch:2,group:3"), {0, 0, 0, 0, 0, -1})), value_error,
      "segment id -1");
  CHECK_THROWS_NAMING(sentence_embeddings(x, Tensor<std::int32_t>(Shape::parse("batch:2,group:4"))), shape_error,
                      "segment ids");
}

TEST_CASE("sentence ids equal to the token count are padding, as in lingvo", "[sentence][fixtures]") {
  const auto cases = fixtures::cases("sentence_pad");
  REQUIRE(cases.size() == 1);
  const auto& c = cases[0];
  const auto x = c.load<double>("inputs", {"batch", "group", "model"});
  const auto seg = c.load<std::int64_t>("segment_ids", {"batch", "group"});
  CHECK(naive::all_close(sentence_embeddings(x, seg),
                         c.load<double>("expected_embeddings", {"batch", "group", "model"}), 1e-12));
}

TEST_CASE("sentence and task gating match the numpy transcription of lingvo", "[sentence][fixtures]") {
  const auto cases = fixtures::cases("sentence");
  REQUIRE(cases.size() == 1);
  const auto& c = cases[0];
  const auto x = c.load<double>("inputs", {"batch", "group", "model"});
  const auto seg = c.load<std::int64_t>("segment_ids", {"batch", "group"});
  const auto wg = c.load<double>("wg", {"model", "experts"});
  CHECK(naive::all_close(sentence_embeddings(x, seg),
                         c.load<double>("expected_embeddings", {"batch", "group", "model"}), 1e-12));
  Top2Options o;
  o.capacity = CapacitySpec::fixed(c.integer("capacity"));
  GatingInputs<double> in;
  const Tensor<double> importance = cast<double>(not_equal(seg, std::int64_t{0}));  // lingvo: 1 - paddings
  in.importance = importance;
  const auto want = c.load<double>("expected_combine", {"batch", "group", "experts", "expert_capacity"});
  const auto r = sentence_top2_gating(wg, x, seg, o, true, in);
  CHECK(naive::all_close(r.plan.combine_tensor(), want, 1e-12));
  CHECK(r.aux_loss == Approx(c.load<double>("expected_aux_loss", {}).item()).epsilon(1e-10));
  // task gating on the same embeddings gives the same routing
  const auto t = task_top2_gating(wg, sentence_embeddings(x, seg), o, true, in);
  CHECK(naive::all_close(t.plan.combine_tensor(), want, 1e-12));
  // every token of a segment gets the same experts (same logits), unless capacity drops it
  for (index_t s = 1; s < 2; ++s) CHECK(r.plan.expert[0] == r.plan.expert[2 * s]);
}

TEST_CASE("sentence gating without local dispatch gates all tokens as one group", "[sentence]") {
  const auto x = naive::random_tensor<double>(Shape::parse("batch:2,group:5,model:3"));
  Tensor<std::int32_t> seg(Shape::parse("batch:2,group:5"), {1, 1, 2, 2, 0, 3, 3, 3, 4, 4});
  const auto wg = naive::random_tensor<double>(Shape::parse("model:3,experts:3"));
  Top2Options o;
  o.capacity = CapacitySpec::fixed(4);
  const auto r = sentence_top2_gating(wg, x, seg, o, false);
  CHECK(r.plan.groups() == 1);
  CHECK(r.plan.group.size == 10);
  const auto flat = reshape(einsum({sentence_embeddings(x, seg), wg}, Shape::parse("batch:2,group:5,experts:3")),
                            Shape::parse("group:10,experts:3"));
  CHECK(naive::all_close(r.plan.combine_tensor(), top2_gating(flat, o).plan.combine_tensor(), 1e-12));
}
