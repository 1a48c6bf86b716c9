#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("softmax, log_softmax, logsumexp (hand-worked)", "[softmax]") {
  Tensor<double> x(Shape::parse("group:2,experts:3"), {0, 0, 0, 1, 2, 3});
  const auto p = softmax(x, "experts");
  CHECK(p.at({0, 0}) == Approx(1.0 / 3));
  const double z = std::exp(1) + std::exp(2) + std::exp(3);
  CHECK(p.at({1, 2}) == Approx(std::exp(3) / z));
  CHECK(logsumexp(x, "experts").at({1}) == Approx(std::log(z)));
  CHECK(log_softmax(x, "experts").at({1, 0}) == Approx(1 - std::log(z)));
  // along the other dim
  const auto q = softmax(x, "group");
  CHECK(q.at({0, 0}) == Approx(1 / (1 + std::exp(1))));
  CHECK(q.at({0, 0}) + q.at({1, 0}) == Approx(1));
}

TEST_CASE("softmax is stable for large logits and defined for -inf", "[softmax]") {
  const float inf = std::numeric_limits<float>::infinity();
  Tensor<float> x(Shape::parse("e:3"), {1000, 1000, -inf});
  const auto p = softmax(x, "e");
  CHECK(p[0] == Approx(0.5));
  CHECK(p[2] == 0);
  CHECK(logsumexp(x, "e").item() == Approx(1000 + std::log(2.f)));
  // an all -inf row: softmax NaN, logsumexp -inf (documented)
  Tensor<float> m(Shape::parse("e:2"), {-inf, -inf});
  CHECK(std::isnan(softmax(m, "e")[0]));
  CHECK(logsumexp(m, "e").item() == -inf);
  CHECK_THROWS_NAMING(softmax(x, "experts"), shape_error, "\"experts\"");
}

TEMPLATE_TEST_CASE("softmax equals a naive loop on random shapes", "[softmax][property]", float, double) {
  for (int trial = 0; trial < 100; ++trial) {
    const Shape s = naive::random_shape(1, 4);
    const std::string dim = s[std::uniform_int_distribution<index_t>(0, s.rank() - 1)(naive::rng())].name;
    const auto x = naive::random_tensor<TestType>(s, -5, 5);
    const auto p = softmax(x, dim);
    const auto lp = log_softmax(x, dim);
    const auto lse = logsumexp(x, dim);
    Tensor<TestType> z(s.without({dim}));
    naive::for_each(s,
                    [&](const naive::Index& idx) { z[naive::offset(z.shape(), idx)] += std::exp(naive::get(x, idx)); });
    naive::for_each(s, [&](const naive::Index& idx) {
      const TestType zz = z[naive::offset(z.shape(), idx)];
      REQUIRE(naive::close(p[naive::offset(s, idx)], std::exp(naive::get(x, idx)) / zz, 1e-5));
      REQUIRE(naive::close(lp[naive::offset(s, idx)], naive::get(x, idx) - std::log(zz), 1e-5, 1e-5));
    });
    for (index_t i = 0; i < z.size(); ++i) REQUIRE(naive::close(lse[i], std::log(z[i]), 1e-5, 1e-5));
  }
}
