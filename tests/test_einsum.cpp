#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("einsum: matrix product and its output-order forms (hand-worked)", "[einsum]") {
  Tensor<float> a(Shape::parse("m:2,k:3"), {1, 2, 3, 4, 5, 6});
  Tensor<float> b(Shape::parse("k:3,n:2"), {1, 0, 0, 1, 1, 1});
  const auto c = einsum({a, b}, Shape::parse("m:2,n:2"));
  CHECK(c.to_vector() == std::vector<float>{4, 5, 10, 11});
  CHECK(einsum({a, b}, Shape::parse("n:2,m:2")).to_vector() == std::vector<float>{4, 10, 5, 11});
  CHECK(einsum({a, b}).to_vector() == c.to_vector());         // dims in exactly one input
  CHECK(einsum({a, b}, {"k"}).to_vector() == c.to_vector());  // reduced_dims form
  CHECK(einsum({a, b}, {"k", "n"}).to_vector() == std::vector<float>{9, 21});
  CHECK(einsum({a}, Shape::parse("k:3")).to_vector() == std::vector<float>{5, 7, 9});
  CHECK(einsum({a, a}, Shape()).item() == 91);  // sum of squares
}

TEST_CASE("einsum: the MoE dispatch contraction gsec,gsm->egcm", "[einsum]") {
  // 1 group, 2 tokens, 2 experts, capacity 1: token 0 -> expert 1, token 1 -> expert 0
  Tensor<double> d(Shape::parse("g:1,s:2,e:2,c:1"), {0, 1, 1, 0});
  Tensor<double> x(Shape::parse("g:1,s:2,m:2"), {1, 2, 3, 4});
  const auto ei = einsum({d, x}, Shape::parse("e:2,g:1,c:1,m:2"));
  CHECK(ei.to_vector() == std::vector<double>{3, 4, 1, 2});
}

TEST_CASE("einsum errors name the dim and the inputs", "[einsum]") {
  Tensor<float> a(Shape::parse("group:2,experts:16"));
  Tensor<float> b(Shape::parse("experts:8"));
  CHECK_THROWS_MATCHES(einsum({a, b}), shape_error,
                       MessageContains("einsum: dim \"experts\" has size 16 in input 0 but 8 in input 1"));
  CHECK_THROWS_NAMING(einsum({a}, Shape::parse("model:3")), shape_error, "\"model\"");
  CHECK_THROWS_NAMING(einsum({a}, Shape::parse("group:3")), shape_error, "\"group\"");
  CHECK_THROWS_NAMING(einsum({a}, {"model"}), shape_error, "\"model\"");
  CHECK_THROWS_AS(einsum(std::vector<TensorRef<float>>{}), value_error);
}

TEST_CASE("einsum with empty and size-1 dims", "[einsum]") {
  Tensor<float> a(Shape::parse("m:2,k:0"));
  Tensor<float> b(Shape::parse("k:0,n:3"));
  const auto c = einsum({a, b}, Shape::parse("m:2,n:3"));
  for (float v : c) CHECK(v == 0.f);
  CHECK(einsum({Tensor<float>(Shape::parse("m:0,k:2")), Tensor<float>(Shape::parse("k:2,n:3"))}).size() == 0);
  Tensor<float> s(Shape::parse("m:1,k:1"), {3});
  Tensor<float> t(Shape::parse("k:1,n:1"), {4});
  CHECK(einsum({s, t}).item() == 12);
}

TEMPLATE_TEST_CASE("einsum equals a naive loop on random operands and outputs", "[einsum][property]", float, double) {
  const std::vector<std::string> pool{"a", "b", "c", "d", "e", "f"};
  for (int trial = 0; trial < 300; ++trial) {
    std::map<std::string, index_t> sizes;
    for (const auto& n : pool)
      sizes[n] = std::uniform_int_distribution<index_t>(trial % 7 == 0 ? 0 : 1, 3)(naive::rng());
    const int nops = std::uniform_int_distribution<int>(1, 4)(naive::rng());
    std::vector<Tensor<TestType>> xs;
    for (int i = 0; i < nops; ++i)
      xs.push_back(naive::random_tensor<TestType>(naive::random_shape_with_sizes(sizes, 0, 5)));
    // output: a random subset of the inputs' dims in random order
    std::vector<Dim> all;
    for (const auto& x : xs)
      for (const auto& d : x.shape())
        if (std::none_of(all.begin(), all.end(), [&](const Dim& e) { return e.name == d.name; })) all.push_back(d);
    std::shuffle(all.begin(), all.end(), naive::rng());
    all.resize(std::uniform_int_distribution<std::size_t>(0, all.size())(naive::rng()));
    const Shape out(all);
    std::vector<TensorRef<TestType>> refs(xs.begin(), xs.end());
    std::vector<const TensorView<const TestType>*> ptrs;
    for (const auto& x : xs) ptrs.push_back(&x);
    const auto got = einsum(refs, out);
    const auto want = naive::einsum(ptrs, out);
    INFO("trial " << trial << " out " << out);
    REQUIRE(naive::all_close(got, want, 1e-4, 1e-4));
  }
}

TEST_CASE("einsum default output and reduced_dims follow Mesh TF", "[einsum][property]") {
  for (int trial = 0; trial < 100; ++trial) {
    std::map<std::string, index_t> sizes{{"a", 2}, {"b", 3}, {"c", 1}, {"d", 2}};
    const auto x = naive::random_tensor<double>(naive::random_shape_with_sizes(sizes, 0, 4));
    const auto y = naive::random_tensor<double>(naive::random_shape_with_sizes(sizes, 0, 4));
    // default: dims in exactly one input, in order of first appearance
    std::vector<Dim> once;
    for (const auto* s : {&x.shape(), &y.shape()})
      for (const auto& d : *s)
        if (x.shape().has(d.name) != y.shape().has(d.name)) once.push_back(d);
    const auto got = einsum({x, y});
    REQUIRE(got.shape() == Shape(once));
    REQUIRE(naive::all_close(got, naive::einsum<double>({&x, &y}, Shape(once)), 1e-12, 1e-12));
    // reduced_dims: every dim in first-appearance order, minus those
    std::vector<Dim> rest;
    for (const auto* s : {&x.shape(), &y.shape()})
      for (const auto& d : *s)
        if (d.name != "a" && std::none_of(rest.begin(), rest.end(), [&](const Dim& e) { return e.name == d.name; }))
          rest.push_back(d);
    if (x.shape().has("a") || y.shape().has("a")) {
      const auto r = einsum({x, y}, {"a"});
      REQUIRE(r.shape() == Shape(rest));
      REQUIRE(naive::all_close(r, naive::einsum<double>({&x, &y}, Shape(rest)), 1e-12, 1e-12));
    }
  }
}

TEST_CASE("einsum on integer tensors is exact", "[einsum]") {
  Tensor<std::int64_t> a(Shape::parse("m:2,k:2"), {1, 2, 3, 4});
  Tensor<std::int64_t> b(Shape::parse("k:2"), {5, 6});
  CHECK(einsum({a, b}).to_vector() == std::vector<std::int64_t>{17, 39});
}
