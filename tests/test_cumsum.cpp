#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("cumsum inclusive and exclusive (hand-worked)", "[cumsum]") {
  Tensor<float> x(Shape::parse("group:4,experts:2"), {1, 0, 0, 1, 1, 1, 1, 0});
  CHECK(cumsum(x, "group").to_vector() == std::vector<float>{1, 0, 1, 1, 2, 2, 3, 2});
  CHECK(cumsum(x, "group", true).to_vector() == std::vector<float>{0, 0, 1, 0, 1, 1, 2, 2});
  CHECK(cumsum(x, "experts").to_vector() == std::vector<float>{1, 1, 0, 1, 1, 2, 1, 1});
  CHECK_THROWS_NAMING(cumsum(x, "length"), shape_error, "\"length\"");
  CHECK(cumsum(Tensor<float>(Shape::parse("a:0,b:3")), "a").size() == 0);
}

TEST_CASE("cumsum of counts is exact far past 256 (Mesh TF's bfloat16 matmul was not)", "[cumsum]") {
  const index_t n = 100000;
  Tensor<std::int32_t> ones(Shape{{"group", n}}, 1);
  const auto c = cumsum(ones, "group", true);
  for (index_t i = 0; i < n; ++i) REQUIRE(c[i] == i);
  Tensor<float> f(Shape{{"group", 20000}}, 1.f);
  const auto cf = cumsum(f, "group");
  CHECK(cf[19999] == 20000.f);
  CHECK(cf[256] == 257.f);
}

TEMPLATE_TEST_CASE("cumsum equals a naive loop", "[cumsum][property]", float, double, std::int64_t) {
  for (int trial = 0; trial < 100; ++trial) {
    const Shape s = naive::random_shape(1, 4);
    const std::string dim = s[std::uniform_int_distribution<index_t>(0, s.rank() - 1)(naive::rng())].name;
    const auto x = naive::random_ints<TestType>(s, -3, 3);
    for (bool exclusive : {false, true}) {
      const auto c = cumsum(x, dim, exclusive);
      naive::for_each(s, [&](const naive::Index& idx) {
        TestType want = 0;
        naive::Index j = idx;
        const index_t upto = exclusive ? idx.at(dim) : idx.at(dim) + 1;
        for (index_t k = 0; k < upto; ++k) {
          j[dim] = k;
          want = static_cast<TestType>(want + naive::get(x, j));
        }
        REQUIRE(c[naive::offset(s, idx)] == want);
      });
    }
  }
}
