#include "check.hpp"
#include "einmoe/core/eigen_interop.hpp"

using namespace einmoe;

TEST_CASE("as_matrix maps a tensor's memory as a row-major matrix", "[eigen]") {
  Tensor<float> x(Shape::parse("batch:2,length:2,model:3"), {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  auto m = as_matrix(x, {"batch", "length"}, {"model"});
  CHECK(m.rows() == 4);
  CHECK(m.cols() == 3);
  CHECK(m(2, 1) == 7);
  m(0, 0) = 42;
  CHECK(x[0] == 42);  // no copy
  const Tensor<float>& cx = x;
  auto cm = as_matrix(cx, {"batch"}, {"length", "model"});
  CHECK(cm.rows() == 2);
  CHECK(cm.cols() == 6);
  CHECK(cm(1, 5) == 11);
  auto all_rows = as_matrix(x, {"batch", "length", "model"}, std::vector<std::string>{});
  CHECK(all_rows.cols() == 1);
}

TEST_CASE("as_matrix refuses dims out of memory order", "[eigen]") {
  Tensor<float> x(Shape::parse("batch:2,length:2,model:3"));
  CHECK_THROWS_NAMING(as_matrix(x, {"model"}, {"batch", "length"}), shape_error, "transpose");
  CHECK_THROWS_AS(as_matrix(x, {"batch"}, {"model"}), shape_error);
  CHECK_THROWS_NAMING(as_matrix(x, {"batch", "length"}, {"hidden"}), shape_error, "hidden");
}
