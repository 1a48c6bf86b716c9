#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("reductions over dims and to shapes (hand-worked)", "[reduce]") {
  // [batch=2, group=3]
  Tensor<float> x(Shape::parse("batch:2,group:3"), {1, 2, 3, 4, 5, 6});
  CHECK(sum(x, "group").to_vector() == std::vector<float>{6, 15});
  CHECK(sum(x, "batch").to_vector() == std::vector<float>{5, 7, 9});
  CHECK(sum(x, {"batch", "group"}).item() == 21);
  CHECK(mean(x, "group").to_vector() == std::vector<float>{2, 5});
  CHECK(max(x, "batch").to_vector() == std::vector<float>{4, 5, 6});
  CHECK(min(x, "group").to_vector() == std::vector<float>{1, 4});
  const auto t = sum_to(x, Shape::parse("group:3"));
  CHECK(t.to_vector() == std::vector<float>{5, 7, 9});
  // sum_to takes the given order
  Tensor<float> y(Shape::parse("a:2,b:2"), {1, 2, 3, 4});
  const auto yt = sum_to(y, Shape::parse("b:2,a:2"));
  CHECK(yt.to_vector() == std::vector<float>{1, 3, 2, 4});
  CHECK(mean_to(x, Shape()).item() == Approx(3.5));
  Tensor<bool> m(Shape::parse("a:2,b:2"), {true, false, false, false});
  CHECK(any(m, "b").to_vector() == std::vector<bool>{true, false});
  CHECK(all(m, "b").to_vector() == std::vector<bool>{false, false});
  CHECK(all_to(logical_not(m), Shape::parse("a:2")).to_vector() == std::vector<bool>{false, true});
  CHECK(any_to(m, Shape::parse("b:2")).to_vector() == std::vector<bool>{true, false});
}

TEST_CASE("reductions over empty dims give the identity", "[reduce]") {
  Tensor<float> e(Shape::parse("a:2,b:0"));
  CHECK(sum(e, "b").to_vector() == std::vector<float>{0, 0});
  CHECK(std::isnan(mean(e, "b")[0]));
  CHECK(max(e, "b")[0] == -std::numeric_limits<float>::infinity());
  CHECK(min(e, "b")[0] == std::numeric_limits<float>::infinity());
  CHECK(max(Tensor<int>(Shape::parse("a:0")), "a").item() == std::numeric_limits<int>::lowest());
  CHECK(all(Tensor<bool>(Shape::parse("a:0")), "a").item());
  CHECK_FALSE(any(Tensor<bool>(Shape::parse("a:0")), "a").item());
  CHECK(sum(e, "a").size() == 0);
}

TEST_CASE("max and min propagate NaN", "[reduce]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor<float> x(Shape::parse("a:3"), {1, nan, 3});
  CHECK(std::isnan(max(x, "a").item()));
  CHECK(std::isnan(min(x, "a").item()));
  Tensor<float> y(Shape::parse("a:3"), {nan, 1, 3});
  CHECK(std::isnan(max(y, "a").item()));
}

TEST_CASE("reduction errors name the dim", "[reduce]") {
  Tensor<float> x(Shape::parse("batch:2,group:3"));
  CHECK_THROWS_NAMING(sum(x, "experts"), shape_error, "\"experts\"");
  CHECK_THROWS_NAMING(sum(x, {"group", "group"}), shape_error, "\"group\"");
  CHECK_THROWS_NAMING(sum_to(x, Shape::parse("experts:2")), shape_error, "\"experts\"");
  CHECK_THROWS_NAMING(sum_to(x, Shape::parse("group:4")), shape_error, "\"group\"");
  CHECK_THROWS_NAMING(mean_to(x, Shape::parse("group:4")), shape_error, "\"group\"");
}

TEMPLATE_TEST_CASE("reductions equal a naive loop on random shapes", "[reduce][property]", float, double) {
  for (int trial = 0; trial < 200; ++trial) {
    const Shape s = naive::random_shape(0, 5);
    const auto x = naive::random_tensor<TestType>(s);
    // reduce a random subset of dims, output in a random order
    std::vector<Dim> keep;
    std::vector<std::string> drop;
    for (const auto& d : s) {
      if (std::uniform_int_distribution<int>(0, 1)(naive::rng())) keep.push_back(d);
      else drop.push_back(d.name);
    }
    std::shuffle(keep.begin(), keep.end(), naive::rng());
    const Shape out(keep);
    const auto r = sum_to(x, out);
    const auto r2 = sum(x, Names(drop));
    Tensor<TestType> want(out);
    Tensor<TestType> mx(out, -std::numeric_limits<TestType>::infinity());
    naive::for_each(s, [&](const naive::Index& idx) {
      want[naive::offset(out, idx)] += naive::get(x, idx);
      auto& m = mx[naive::offset(out, idx)];
      m = std::max(m, naive::get(x, idx));
    });
    REQUIRE(naive::all_close(r, want, 1e-5, 1e-5));
    REQUIRE(naive::all_close(transpose(r2, out), want, 1e-5, 1e-5));
    REQUIRE(naive::all_close(max_to(x, out), mx, 0));
  }
}
