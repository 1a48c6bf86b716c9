#include <xtensor/xbuilder.hpp>

#include "check.hpp"
#include "einmoe/core/xtensor_interop.hpp"

using namespace einmoe;

TEST_CASE("borrow wraps xtensor containers without copying", "[xtensor]") {
  xt::xarray<float> a = xt::arange<float>(6.f);
  a.reshape({2, 3});
  auto t = borrow(a, {"batch", "model"});
  CHECK(t.shape() == Shape::parse("batch:2,model:3"));
  CHECK(t.data() == a.data());
  t.at({1, 2}) = 100;
  CHECK(a(1, 2) == 100);
  xt::xtensor<double, 2> b = xt::zeros<double>({3, 1});
  auto tb = borrow(b, {"x", "y"});
  CHECK(tb.data() == b.data());
  CHECK_THROWS_NAMING(borrow(a, {"batch"}), shape_error, "rank");
  xt::xarray<float, xt::layout_type::column_major> cm = xt::zeros<float>({2, 2});
  (void)cm;
}

TEST_CASE("borrow of a const xtensor container is a read-only view", "[xtensor]") {
  const xt::xarray<float> a = xt::arange<float>(4.f);
  auto t = borrow(a, {"n"});
  CHECK_FALSE(t.writable());
  CHECK(t.data() == a.data());
  const xt::xtensor<double, 1> b = xt::zeros<double>({3});
  CHECK_FALSE(borrow(b, {"n"}).writable());
  CHECK(as_xtensor(t)(2) == 2.f);
}

TEST_CASE("as_xtensor adapts a tensor without copying, to_xarray copies", "[xtensor]") {
  Tensor<int> t(Shape::parse("a:2,b:2"), {1, 2, 3, 4});
  auto v = as_xtensor(t);
  CHECK(v(1, 0) == 3);
  v(0, 1) = 20;
  CHECK(t.at({0, 1}) == 20);
  auto c = to_xarray(t);
  c(0, 0) = -5;
  CHECK(t.at({0, 0}) == 1);
  CHECK(c.shape()[0] == 2);
}
