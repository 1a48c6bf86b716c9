// decoding/greedy.hpp: argmax, forced ids, EOS, seeded sampling, errors.
#include "check.hpp"

using namespace einmoe;

TEST_CASE("greedy decoding: argmax, forced ids, EOS stop, sampling", "[greedy]") {
  // a bigram table over vocab 4: next = argmax row[prev]
  const double T[4][4] = {{0, 0, 5, 1}, {0, 9, 0, 0}, {0, 1, 0, 3}, {0, 4, 0, 0}};
  GreedyLogitsFn<double> fn = [&](index_t step, const TensorView<const std::int64_t>& ids,
                                  std::vector<Tensor<double>>&) {
    const index_t R = ids.shape()[0].size, L = ids.shape()[1].size;
    Tensor<double> l(Shape{{"batch", R}, {"vocab", 4}});
    for (index_t r = 0; r < R; ++r) {
      const std::int64_t prev = step == 0 ? 0 : ids[r * L + step - 1];
      for (index_t v = 0; v < 4; ++v) l[r * 4 + v] = T[prev][v];
    }
    return l;
  };
  Tensor<std::int64_t> init(Shape::parse("batch:2,length:6"));
  // 0 -> 2 -> 3 -> 1 (EOS): both rows stop after 3 steps
  auto r = greedy_decode<double>(fn, init);
  CHECK(r.ids.to_vector() == std::vector<std::int64_t>{2, 3, 1, 0, 0, 0, 2, 3, 1, 0, 0, 0});
  CHECK(r.steps == 3);
  // forced ids override nonzero positions; row 1 forced to 3 at step 0 -> 1 -> stays EOS
  Tensor<std::int64_t> forced(Shape::parse("batch:2,length:6"), {0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0});
  r = greedy_decode<double>(fn, init, GreedyOptions{}, forced);
  CHECK(r.ids.to_vector() == std::vector<std::int64_t>{2, 3, 1, 0, 0, 0, 3, 1, 1, 0, 0, 0});
  // no EOS reachable: runs to the length
  GreedyOptions o;
  o.eos_id = 7;
  CHECK(greedy_decode<double>(fn, init, o).steps == 6);
  // sampling is seeded and reproducible; a huge temperature makes it differ from argmax
  o.temperature = 50.0;
  o.seed = 4;
  const auto s1 = greedy_decode<double>(fn, init, o), s2 = greedy_decode<double>(fn, init, o);
  CHECK(s1.ids.to_vector() == s2.ids.to_vector());
  CHECK(s1.ids.to_vector() != greedy_decode<double>(fn, init, GreedyOptions{}).ids.to_vector());
  o.temperature = -1;
  CHECK_THROWS_AS(greedy_decode<double>(fn, init, o), value_error);
  Tensor<std::int64_t> short_forced(Shape::parse("batch:2,length:5"));
  CHECK_THROWS_NAMING(greedy_decode<double>(fn, init, GreedyOptions{}, short_forced), shape_error, "forced");
}
