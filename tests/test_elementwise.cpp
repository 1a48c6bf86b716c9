#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("broadcast_shape follows Mesh TF's rule", "[elementwise]") {
  const Shape bm = Shape::parse("batch:2,model:3");
  CHECK(broadcast_shape(bm, Shape::parse("model:3")) == bm);
  CHECK(broadcast_shape(Shape::parse("model:3"), bm) == bm);
  CHECK(broadcast_shape(Shape(), bm) == bm);
  // neither a subsequence: first's dims, then the second's new ones in order
  CHECK(broadcast_shape(Shape::parse("batch:2,length:4"), Shape::parse("model:3,length:4")) ==
        Shape::parse("batch:2,length:4,model:3"));
  // same dims in another order: not a subsequence either way -> first's order
  CHECK(broadcast_shape(Shape::parse("a:2,b:3"), Shape::parse("b:3,a:2")) == Shape::parse("a:2,b:3"));
  CHECK_THROWS_MATCHES(broadcast_shape(bm, Shape::parse("model:4"), "add"), shape_error,
                       MessageContains("add: dim \"model\" has size 3 in input 0 but 4 in input 1"));
}

TEST_CASE("arithmetic broadcasts by name (hand-worked)", "[elementwise]") {
  Tensor<float> x(Shape::parse("batch:2,model:3"), {1, 2, 3, 4, 5, 6});
  Tensor<float> b(Shape::parse("model:3"), {10, 20, 30});
  const auto y = x + b;
  CHECK(y.shape() == x.shape());
  CHECK(y.to_vector() == std::vector<float>{11, 22, 33, 14, 25, 36});
  Tensor<float> c(Shape::parse("batch:2"), {1, -1});
  CHECK((x * c).to_vector() == std::vector<float>{1, 2, 3, -4, -5, -6});
  CHECK((b - x).shape() == x.shape());
  CHECK((b - x).to_vector() == std::vector<float>{9, 18, 27, 6, 15, 24});
  CHECK((x * 2).to_vector() == std::vector<float>{2, 4, 6, 8, 10, 12});
  CHECK((1.f / Tensor<float>(Shape::parse("a:2"), {2, 4})).to_vector() == std::vector<float>{0.5f, 0.25f});
  // outer product of disjoint dims: first operand's dims then the second's
  Tensor<float> l(Shape::parse("length:2"), {1, 2});
  const auto o = l * b;
  CHECK(o.shape() == Shape::parse("length:2,model:3"));
  CHECK(o.to_vector() == std::vector<float>{10, 20, 30, 20, 40, 60});
  // explicit output shape wins
  const auto t = add(l, b, Shape::parse("model:3,length:2"));
  CHECK(t.to_vector() == std::vector<float>{11, 12, 21, 22, 31, 32});
  CHECK_THROWS_NAMING(add(l, b, Shape::parse("model:3")), shape_error, "\"length\"");
  CHECK_THROWS_NAMING(add(l, b, Shape::parse("model:3,length:5")), shape_error, "\"length\"");
  CHECK_THROWS_NAMING(x + Tensor<float>(Shape::parse("model:4")), shape_error, "\"model\"");
}

TEST_CASE("comparisons, logic, where, minimum/maximum, cast", "[elementwise]") {
  Tensor<float> x(Shape::parse("a:4"), {-1, 0, 2, 5});
  CHECK(greater(x, 0.f).to_vector() == std::vector<bool>{false, false, true, true});
  CHECK(less_equal(x, 0.f).to_vector() == std::vector<bool>{true, true, false, false});
  CHECK(equal(x, 2.f).to_vector() == std::vector<bool>{false, false, true, false});
  CHECK(not_equal(2.f, x).to_vector() == std::vector<bool>{true, true, false, true});
  CHECK(greater_equal(x, x).to_vector() == std::vector<bool>{true, true, true, true});
  CHECK(less(x, Tensor<float>(Shape::parse("a:4"), {0, 0, 0, 9})).to_vector() ==
        std::vector<bool>{true, false, false, true});
  const auto m = greater(x, 0.f);
  CHECK(logical_not(m).to_vector() == std::vector<bool>{true, true, false, false});
  CHECK(logical_and(m, less(x, 3.f)).to_vector() == std::vector<bool>{false, false, true, false});
  CHECK(logical_or(m, less(x, 0.f)).to_vector() == std::vector<bool>{true, false, true, true});
  CHECK(where(m, x, 0.f).to_vector() == std::vector<float>{0, 0, 2, 5});
  CHECK(where(m, 1.f, x).to_vector() == std::vector<float>{-1, 0, 1, 1});
  CHECK(minimum(x, 1.f).to_vector() == std::vector<float>{-1, 0, 1, 1});
  CHECK(maximum(x, 1.f).to_vector() == std::vector<float>{1, 1, 2, 5});
  CHECK(cast<int>(Tensor<float>(Shape::parse("a:2"), {1.7f, -2.2f})).to_vector() == std::vector<int>{1, -2});
  CHECK(cast<float>(m).to_vector() == std::vector<float>{0, 0, 1, 1});
  // where broadcasts cond [a] against values [b]
  Tensor<float> y(Shape::parse("b:2"), {10, 20});
  const auto w = where(m, y, Tensor<float>::scalar(-1.f));
  CHECK(w.shape() == Shape::parse("a:4,b:2"));
  CHECK(w.at({2, 1}) == 20);
  CHECK(w.at({0, 1}) == -1);
}

TEST_CASE("unary math matches the textbook formulas", "[elementwise]") {
  Tensor<double> x(Shape::parse("a:7"), {-30, -2, -0.5, 0, 0.5, 2, 30});
  for (index_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    CHECK(exp(x)[i] == Approx(std::exp(v)));
    CHECK(relu(x)[i] == (v > 0 ? v : 0));
    CHECK(abs(x)[i] == std::abs(v));
    CHECK(tanh(x)[i] == Approx(std::tanh(v)));
    CHECK(erf(x)[i] == Approx(std::erf(v)));
    CHECK(sigmoid(x)[i] == Approx(1 / (1 + std::exp(-v))));
    CHECK(softplus(x)[i] == Approx(std::log1p(std::exp(v))).margin(1e-12));
    CHECK(gelu(x)[i] == Approx(0.5 * v * (1 + std::erf(v / std::sqrt(2.0)))).margin(1e-12));
    CHECK(gelu_tanh(x)[i] ==
          Approx(0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))).margin(1e-12));
    CHECK(silu(x)[i] == Approx(v / (1 + std::exp(-v))).margin(1e-12));
    CHECK((-x)[i] == -v);
  }
  // gelu and gelu_tanh are different functions
  CHECK(gelu(x)[4] != gelu_tanh(x)[4]);
  // known values
  CHECK(gelu(Tensor<double>::scalar(1.0)).item() == Approx(0.8413447460685429));
  CHECK(softplus(Tensor<double>::scalar(1000.0)).item() == Approx(1000.0));
  CHECK(sigmoid(Tensor<float>::scalar(-1000.f)).item() == 0.f);
  Tensor<double> p(Shape::parse("a:3"), {1, 4, 9});
  CHECK(sqrt(p).to_vector() == std::vector<double>{1, 2, 3});
  CHECK(pow(p, 0.5).to_vector() == std::vector<double>{1, 2, 3});
  CHECK(log(exp(p))[2] == Approx(9));
}

TEMPLATE_TEST_CASE("binary ops equal a naive loop on random shapes", "[elementwise][property]", float, double) {
  for (int trial = 0; trial < 200; ++trial) {
    std::map<std::string, index_t> sizes;
    for (const char* n : {"a", "b", "c", "d", "e"})
      sizes[n] = std::uniform_int_distribution<index_t>(0, 3)(naive::rng());
    const Shape sa = naive::random_shape_with_sizes(sizes, 0, 5);
    const Shape sb = naive::random_shape_with_sizes(sizes, 0, 5);
    const auto a = naive::random_tensor<TestType>(sa);
    const auto b = naive::random_tensor<TestType>(sb);
    const auto r = a * b + a;
    const Shape expect = broadcast_shape(sa, sb);
    REQUIRE(r.shape() == expect);
    // The reference is computed in double, and the tolerance scales with the
    // terms, not the result: a*b + a cancels when b ~ -1, and the compiler may
    // fuse it into one FMA where einmoe rounds a*b first.
    const double eps = std::is_same<TestType, float>::value ? 1e-6 : 1e-14;
    naive::for_each(expect, [&](const naive::Index& idx) {
      const double x = naive::get(a, idx), y = naive::get(b, idx);
      const double got = r[naive::offset(expect, idx)];
      REQUIRE(std::abs(got - (x * y + x)) <= eps * (std::abs(x * y) + std::abs(x)) + 1e-300);
    });
    const auto g = greater(a, b);
    naive::for_each(expect, [&](const naive::Index& idx) {
      REQUIRE(g[naive::offset(expect, idx)] == (naive::get(a, idx) > naive::get(b, idx)));
    });
  }
}
