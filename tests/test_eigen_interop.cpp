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

TEST_CASE("borrow names an Eigen matrix's dims in its storage order, without copying", "[eigen]") {
  Eigen::MatrixXf cm(2, 3);  // column-major: memory is [cols=3][rows=2]
  cm << 1, 2, 3, 4, 5, 6;
  auto t = borrow(cm, "model", "experts");
  CHECK(t.shape() == Shape::parse("experts:3,model:2"));
  CHECK(t.data() == cm.data());
  // element (model=1, experts=2) is cm(1, 2) whatever the storage order
  CHECK(t.at({2, 1}) == cm(1, 2));
  t.at({0, 1}) = 40;
  CHECK(cm(1, 0) == 40);

  RowMatrix<double> rm(2, 3);
  rm << 1, 2, 3, 4, 5, 6;
  auto r = borrow(rm, "model", "experts");
  CHECK(r.shape() == Shape::parse("model:2,experts:3"));
  CHECK(r.at({1, 2}) == 6);

  const Eigen::MatrixXf& ccm = cm;
  auto ro = borrow(ccm, "model", "experts");
  CHECK_FALSE(ro.writable());
  CHECK(static_cast<const Tensor<float>&>(ro).data() == cm.data());
  Eigen::Map<const Eigen::MatrixXf> map(cm.data(), 2, 3);
  CHECK_FALSE(borrow(map, "model", "experts").writable());

  const Eigen::VectorXf vec = Eigen::VectorXf::LinSpaced(4, 0, 3);
  auto tv = borrow(vec, "experts");
  CHECK(tv.shape() == Shape::parse("experts:4"));
  CHECK_FALSE(tv.writable());
  CHECK(static_cast<const Tensor<float>&>(tv)[3] == 3);
  CHECK_THROWS_NAMING(borrow(cm, "experts"), shape_error, "not a vector");
  // a block with a gap between columns is not contiguous
  Eigen::MatrixXf big(4, 4);
  CHECK_THROWS_NAMING(borrow(big.block(0, 0, 2, 2), "a", "b"), shape_error, "not contiguous");
}
