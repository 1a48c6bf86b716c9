#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("topk reproduces the published example", "[index]") {
  // [a=6, b=2]: [[1,10],[2,9],[3,8],[4,7],[5,6],[6,5]], k=2 over a
  Tensor<float> x(Shape::parse("a:6,b:2"), {1, 10, 2, 9, 3, 8, 4, 7, 5, 6, 6, 5});
  const auto t = topk(x, "a", Dim("k", 2));
  CHECK(t.values.shape() == Shape::parse("b:2,k:2"));
  CHECK(t.values.to_vector() == std::vector<float>{6, 5, 10, 9});
  CHECK(t.indices.to_vector() == std::vector<std::int64_t>{5, 4, 0, 1});
}

TEST_CASE("top1 and topk break ties toward the lower index, NaN ranks first", "[index]") {
  Tensor<float> x(Shape::parse("g:2,e:4"), {1, 3, 3, 0, 2, 2, 2, 2});
  const auto [v, i] = top1(x, "e");
  CHECK(v.to_vector() == std::vector<float>{3, 2});
  CHECK(i.to_vector() == std::vector<std::int64_t>{1, 0});
  const auto t = topk(x, "e", Dim("k", 3));
  CHECK(t.indices.to_vector() == std::vector<std::int64_t>{1, 2, 0, 0, 1, 2});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor<float> n(Shape::parse("e:3"), {1, nan, nan});
  CHECK(top1(n, "e").indices.item() == 1);
  CHECK(topk(x, "e", Dim("k", 0)).values.size() == 0);
}

TEST_CASE("topk and top1 errors", "[index]") {
  Tensor<float> x(Shape::parse("g:2,e:4"));
  CHECK_THROWS_NAMING(topk(x, "e", Dim("k", 5)), shape_error, "\"k\"");
  CHECK_THROWS_NAMING(topk(x, "experts", Dim("k", 1)), shape_error, "\"experts\"");
  CHECK_THROWS_NAMING(topk(x, "e", Dim("g", 1)), shape_error, "\"g\"");
  CHECK_THROWS_NAMING(top1(Tensor<float>(Shape::parse("g:2,e:0")), "e"), shape_error, "\"e\"");
}

TEST_CASE("one_hot gives all-zero rows for out-of-range indices", "[index]") {
  Tensor<std::int64_t> i(Shape::parse("g:4"), {0, 2, -1, 3});
  const auto oh = one_hot<float>(i, Dim("e", 3));
  CHECK(oh.shape() == Shape::parse("g:4,e:3"));
  CHECK(oh.to_vector() == std::vector<float>{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0});
  const auto oh2 = one_hot<double>(Tensor<int>(Shape::parse("g:1"), {1}), Dim("e", 2), 5.0, -1.0);
  CHECK(oh2.to_vector() == std::vector<double>{-1, 5});
  CHECK_THROWS_NAMING(one_hot<float>(i, Dim("g", 3)), shape_error, "\"g\"");
}

TEST_CASE("range and gather (hand-worked, Mesh TF semantics)", "[index]") {
  CHECK(range(Dim("l", 4)).to_vector() == std::vector<std::int64_t>{0, 1, 2, 3});
  CHECK(range<float>(Dim("l", 2)).to_vector() == std::vector<float>{0, 1});
  // x: [batch=2, beam=3]; indices [batch] over beam -> [batch]
  Tensor<float> x(Shape::parse("batch:2,beam:3"), {1, 2, 3, 4, 5, 6});
  Tensor<std::int32_t> i(Shape::parse("batch:2"), {2, 0});
  CHECK(gather(x, i, "beam").to_vector() == std::vector<float>{3, 4});
  // a scalar index picks the same beam in every row
  CHECK(gather(x, Tensor<std::int32_t>::scalar(1), "beam").to_vector() == std::vector<float>{2, 5});
  // indices with a new dim: [k] over beam -> [k, batch]
  Tensor<std::int64_t> k(Shape::parse("k:2"), {2, 9});
  const auto g = gather(x, k, "beam");
  CHECK(g.shape() == Shape::parse("k:2,batch:2"));
  CHECK(g.to_vector() == std::vector<float>{3, 6, 0, 0});
  CHECK_THROWS_NAMING(gather(x, k, "length"), shape_error, "\"length\"");
  CHECK_THROWS_NAMING(gather(x, Tensor<int>(Shape::parse("batch:5")), "beam"), shape_error, "\"batch\"");
}

TEMPLATE_TEST_CASE("topk equals a naive sort", "[index][property]", float, double) {
  for (int trial = 0; trial < 100; ++trial) {
    const Shape s = naive::random_shape(1, 4, {"a", "b", "c", "d"}, 5);
    const std::string dim = s[std::uniform_int_distribution<index_t>(0, s.rank() - 1)(naive::rng())].name;
    // small integers so that ties occur
    const auto x = naive::random_ints<TestType>(s, 0, 3);
    const index_t k = std::uniform_int_distribution<index_t>(0, s.size_of(dim))(naive::rng());
    const auto t = topk(x, dim, Dim("k", k));
    const Shape rest = s.without({dim});
    naive::for_each(rest, [&](const naive::Index& idx) {
      std::vector<std::pair<TestType, index_t>> col;
      naive::Index j = idx;
      for (index_t p = 0; p < s.size_of(dim); ++p) {
        j[dim] = p;
        col.push_back({naive::get(x, j), p});
      }
      std::stable_sort(col.begin(), col.end(), [](auto& l, auto& r) { return l.first > r.first; });
      for (index_t q = 0; q < k; ++q) {
        naive::Index o = idx;
        o["k"] = q;
        REQUIRE(t.values[naive::offset(t.values.shape(), o)] == col[static_cast<std::size_t>(q)].first);
        REQUIRE(t.indices[naive::offset(t.values.shape(), o)] == col[static_cast<std::size_t>(q)].second);
      }
    });
  }
}

TEST_CASE("gather and one_hot equal a naive loop on random shapes", "[index][property]") {
  for (int trial = 0; trial < 150; ++trial) {
    std::map<std::string, index_t> sizes;
    for (const char* n : {"a", "b", "c", "d"}) sizes[n] = std::uniform_int_distribution<index_t>(0, 3)(naive::rng());
    const Shape xs = naive::random_shape_with_sizes(sizes, 1, 4);
    const std::string dim = xs[std::uniform_int_distribution<index_t>(0, xs.rank() - 1)(naive::rng())].name;
    // indices over the other names (shared ones act as batch dims), some out of range
    std::map<std::string, index_t> isizes = sizes;
    isizes.erase(dim);
    isizes["k"] = std::uniform_int_distribution<index_t>(0, 3)(naive::rng());
    const Shape is = naive::random_shape_with_sizes(isizes, 0, 3);
    const auto x = naive::random_tensor<double>(xs);
    const index_t n = xs.size_of(dim);
    const auto idx = naive::random_ints<std::int64_t>(is, -1, n);
    const auto g = gather(x, idx, dim);
    // shape: indices' dims, then x's other dims not in the indices
    std::vector<Dim> want = is.dims();
    for (const auto& d : xs)
      if (d.name != dim && !is.has(d.name)) want.push_back(d);
    REQUIRE(g.shape() == Shape(want));
    naive::for_each(g.shape(), [&](const naive::Index& at) {
      const index_t i = idx[naive::offset(is, at)];
      naive::Index src = at;
      src[dim] = i;
      const double expect = (i >= 0 && i < n) ? naive::get(x, src) : 0.0;
      REQUIRE(g[naive::offset(g.shape(), at)] == expect);
    });
    const auto oh = one_hot<float>(idx, Dim("hot", n));
    naive::for_each(oh.shape(), [&](const naive::Index& at) {
      REQUIRE(oh[naive::offset(oh.shape(), at)] == (idx[naive::offset(is, at)] == at.at("hot") ? 1.f : 0.f));
    });
  }
}

TEST_CASE("gather_k reproduces lingvo's GatherK (numpy transcription of its code)", "[index][gather_k][fixtures]") {
  const auto cases = fixtures::cases("gather_k");
  REQUIRE(cases.size() == 2);
  for (const auto& c : cases) {
    INFO(c.name);
    const auto sel = c.load<std::int64_t>("selected", {"batch", "time"});
    const bool extra = c.name == "gather_k_random";
    const auto vals =
        extra ? c.load<double>("values", {"batch", "time", "model"}) : c.load<double>("values", {"batch", "time"});
    const Dim k("k", c.integer("k"));
    const auto r = gather_k(sel, vals, k);
    CHECK(r.output.shape() == (extra ? Shape{sel.shape()[0], k, vals.shape()[2]} : Shape{sel.shape()[0], k}));
    CHECK(r.output.to_vector() == c.load<double>("expected_output", extra ? std::vector<std::string>{"b", "k", "m"}
                                                                          : std::vector<std::string>{"b", "k"})
                                      .to_vector());
    CHECK(r.padding.to_vector() == c.load<double>("expected_padding", {"b", "k"}).to_vector());
  }
  // hand-worked: the last k selected, ascending; padding first, holding time 0
  const Tensor<int> sel(Shape::parse("batch:1,time:5"), {1, 0, 1, 1, 1});
  const Tensor<double> v(Shape::parse("batch:1,time:5"), {10, 11, 12, 13, 14});
  CHECK(gather_k(sel, v, Dim("k", 2)).output.to_vector() == std::vector<double>{13, 14});
  const Tensor<int> one(Shape::parse("batch:1,time:5"), {0, 0, 0, 1, 0});
  const auto r = gather_k(one, v, Dim("k", 3));
  CHECK(r.output.to_vector() == std::vector<double>{10, 10, 13});
  CHECK(r.padding.to_vector() == std::vector<double>{1, 1, 0});
  // errors
  CHECK_THROWS_NAMING(gather_k(sel, v, Dim("k", 6)), value_error, "k = 6");
  CHECK_THROWS_NAMING(gather_k(Tensor<int>(Shape::parse("batch:1,time:5"), 2), v, Dim("k", 2)), value_error, "0 or 1");
  CHECK_THROWS_NAMING(gather_k(sel, Tensor<double>(Shape::parse("batch:1,time:4")), Dim("k", 2)), shape_error, "time");
  CHECK_THROWS_NAMING(gather_k(sel, Tensor<double>(Shape::parse("rows:1,time:5")), Dim("k", 2)), shape_error, "batch");
  CHECK(
      gather_k(Tensor<int>(Shape::parse("batch:0,time:3")), Tensor<double>(Shape::parse("batch:0,time:3")), Dim("k", 2))
          .output.size() == 0);
}
