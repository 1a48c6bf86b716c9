#include "check.hpp"
#include "einmoe/routers/losses.hpp"

using namespace einmoe;

TEST_CASE("cv_squared: hand-worked values", "[losses]") {
  // [1, 3]: mean 2, variance 1 -> 1/4
  CHECK(cv_squared(Tensor<double>(Shape::parse("e:2"), {1, 3})) == Approx(0.25).epsilon(1e-9));
  // uniform -> 0
  CHECK(cv_squared(Tensor<double>(Shape::parse("e:4"), 2.5)) == Approx(0.0).margin(1e-12));
  // [0, 0, 4]: mean 4/3, var (16/9*2 + 64/9)/3 = 32/9 -> (32/9) / (16/9) = 2
  CHECK(cv_squared(Tensor<double>(Shape::parse("e:3"), {0, 0, 4})) == Approx(2.0).epsilon(1e-9));
  // empty -> 0; all zeros -> 0
  CHECK(cv_squared(Tensor<double>(Shape::parse("e:0"))) == 0.0);
  CHECK(cv_squared(Tensor<float>(Shape::parse("a:2,b:2"))) == 0.0f);
}
