#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {
std::vector<float> bias_rows(const Tensor<bool>& m) { return to_bias<float>(m).to_vector(); }
constexpr float X = -1e9f;
}  // namespace

TEST_CASE("Mesh TF local block bias: the published block-3 rows", "[masks]") {
  // 2 x block length overflowing is a shape_error naming the dim, not a wrap
  CHECK_THROWS_NAMING(local_block_mask(Dim("block_length", index_t{1} << 62)), shape_error, "block_length");
  const auto m = local_block_mask(Dim("block_length", 3));
  CHECK(m.shape() == Shape::parse("block_length:3,memory_length:6"));
  CHECK(bias_rows(m) == std::vector<float>{0, 0, 0, 0, X, X, /**/ 0, 0, 0, 0, 0, X, /**/ 0, 0, 0, 0, 0, 0});
  // the older form: causal over the given memory
  CHECK(bias_rows(local_block_mask_v1(Dim("block_length", 2), Dim("memory_length", 3))) ==
        std::vector<float>{0, X, X, /**/ 0, 0, X});
}

TEST_CASE("causal and autoregressive masks", "[masks]") {
  const auto c = causal_mask(Dim("length", 3));
  CHECK(c.shape() == Shape::parse("length:3,memory_length:3"));
  CHECK(c.to_vector() == std::vector<bool>{true, false, false, true, true, false, true, true, true});
  // on position tensors, with a batch dim: query i sees memory j iff pos_j <= pos_i
  Tensor<std::int64_t> pos(Shape::parse("batch:1,length:3"), {0, 2, 1});
  const auto a = autoregressive_mask(pos);
  CHECK(a.shape() == Shape::parse("batch:1,length:3,memory_length:3"));
  CHECK(a.to_vector() == std::vector<bool>{true, false, false, /**/ true, true, true, /**/ true, false, true});
  CHECK(to_bias<float>(a).shape() == a.shape());
  CHECK(rename_length_to_memory_length(pos).shape() == Shape::parse("batch:1,memory_length:3"));
  CHECK_THROWS_NAMING(causal_mask(Dim("length", 2), "length"), shape_error, "\"length\"");
}

TEST_CASE("padding and same-segment masks", "[masks]") {
  Tensor<std::int32_t> ids(Shape::parse("batch:2,length:3"), {5, 7, 0, 0, 3, 0});
  const auto p = padding_mask(ids);
  CHECK(p.shape() == Shape::parse("batch:2,memory_length:3"));
  CHECK(bias_rows(p) == std::vector<float>{0, 0, X, X, 0, X});
  Tensor<std::int32_t> seg(Shape::parse("batch:1,length:3"), {1, 1, 2});
  const auto s = same_segment_mask(seg);
  CHECK(s.shape() == Shape::parse("batch:1,length:3,memory_length:3"));
  CHECK(s.to_vector() == std::vector<bool>{true, true, false, true, true, false, false, false, true});
  Tensor<std::int32_t> mem(Shape::parse("batch:1,memory_length:2"), {2, 1});
  const auto sm = same_segment_mask(seg, mem);
  CHECK(sm.shape() == Shape::parse("batch:1,length:3,memory_length:2"));
  CHECK(sm.to_vector() == std::vector<bool>{false, true, false, true, true, false});
  // The source renames the memory ids' length dim: memory ids [batch, length]
  // work as the query's do (here: another length, 2).
  Tensor<std::int32_t> mem_l(Shape::parse("batch:1,length:2"), {2, 1});
  CHECK(same_segment_mask(seg, mem_l).to_vector() == sm.to_vector());
  CHECK(same_segment_mask(seg, seg).to_vector() == s.to_vector());
  Tensor<std::int32_t> both(Shape::parse("batch:1,length:3,memory_length:2"));
  CHECK_THROWS_NAMING(same_segment_mask(seg, both), shape_error, "both");
  Tensor<std::int32_t> neither(Shape::parse("batch:1,width:2"));
  CHECK_THROWS_NAMING(same_segment_mask(seg, neither), shape_error, "memory_length");
}

TEST_CASE("sliding window, offset and bottom-right causal, prefix LM, block diagonal", "[masks]") {
  const Dim q("length", 4), k("memory_length", 4);
  const auto w = sliding_window_mask(q, k, 1, 0);  // self and one to the left
  CHECK(w.to_vector() == std::vector<bool>{1, 0, 0, 0, /**/ 1, 1, 0, 0, /**/ 0, 1, 1, 0, /**/ 0, 0, 1, 1});
  CHECK(sliding_window_mask(q, k, 0, 1).at({1, 2}));
  CHECK_THROWS_AS(sliding_window_mask(q, k, -1, 0), value_error);
  // cached decoding: 2 new queries over 5 memory positions -> query 0 is position 3
  const auto br = causal_mask_bottom_right(Dim("length", 2), Dim("memory_length", 5));
  CHECK(br.to_vector() == std::vector<bool>{1, 1, 1, 1, 0, /**/ 1, 1, 1, 1, 1});
  CHECK(causal_mask_with_offset(Dim("length", 2), Dim("memory_length", 5), 3).to_vector() == br.to_vector());
  // more queries than memory: the first rows see nothing
  const auto empty_rows = causal_mask_bottom_right(Dim("length", 3), Dim("memory_length", 2));
  CHECK(empty_rows.to_vector() == std::vector<bool>{0, 0, /**/ 1, 0, /**/ 1, 1});
  const auto pl = prefix_lm_mask(q, 2);
  CHECK(pl.to_vector() == std::vector<bool>{1, 1, 0, 0, /**/ 1, 1, 0, 0, /**/ 1, 1, 1, 0, /**/ 1, 1, 1, 1});
  const auto bd = block_diagonal_mask(Dim("length", 5), {2, 2}, false);
  CHECK(bd.to_vector() == std::vector<bool>{1,      1, 0, 0, 0, /**/ 1, 1, 0, 0, 0,
                                            /**/ 0, 0, 1, 1, 0, /**/ 0, 0, 1, 1, 0,
                                            /**/ 0, 0, 0, 0, 0});
  CHECK(block_diagonal_mask(Dim("length", 4), {2, 2}, true).at({1, 0}));
  CHECK_FALSE(block_diagonal_mask(Dim("length", 4), {2, 2}, true).at({0, 1}));
  CHECK_THROWS_NAMING(block_diagonal_mask(Dim("length", 3), {2, 2}), shape_error, "\"length\"");
  // AND / OR broadcast by name
  const auto both = mask_and(causal_mask(Dim("length", 4)), pl);
  CHECK(both.to_vector() == causal_mask(Dim("length", 4)).to_vector());
  CHECK(mask_or(causal_mask(Dim("length", 4)), pl).to_vector() == pl.to_vector());
}

TEST_CASE("bias <-> visibility round trips, for -1e9 and -inf", "[masks]") {
  const auto m = prefix_lm_mask(Dim("length", 5), 2);
  CHECK(to_visibility(to_bias<float>(m)).to_vector() == m.to_vector());
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(to_visibility(to_bias<float>(m, -inf), -inf).to_vector() == m.to_vector());
  CHECK(to_visibility(to_bias<double>(m)).to_vector() == m.to_vector());
}

TEST_CASE("masked softmax: masked entries get 0, fully masked rows give zeros", "[masks]") {
  Tensor<double> logits(Shape::parse("heads:2,length:3,memory_length:3"));
  for (index_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<double>(i % 5) * 0.3;
  auto vis = causal_mask(Dim("length", 3));
  vis.at({0, 0}) = false;  // query 0 sees nothing
  const auto p = masked_softmax(logits, vis, "memory_length");
  CHECK(p.shape() == logits.shape());
  for (index_t h = 0; h < 2; ++h) {
    for (index_t j = 0; j < 3; ++j) CHECK(p.at({h, 0, j}) == 0.0);  // fully masked row -> zeros
    CHECK(p.at({h, 1, 2}) == 0.0);
    CHECK(p.at({h, 2, 0}) + p.at({h, 2, 1}) + p.at({h, 2, 2}) == Approx(1.0));
    const double a = std::exp(logits.at({h, 1, 0})), b = std::exp(logits.at({h, 1, 1}));
    CHECK(p.at({h, 1, 0}) == Approx(a / (a + b)));
  }
  CHECK_THROWS_NAMING(masked_softmax(logits, causal_mask(Dim("query", 3)), "memory_length"), shape_error, "mask");
}
