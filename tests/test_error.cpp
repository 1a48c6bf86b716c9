#include "check.hpp"
#include "einmoe/core/error.hpp"

TEST_CASE("every einmoe exception is an einmoe::error and a std::runtime_error", "[error]") {
  CHECK_THROWS_AS(throw einmoe::shape_error("s"), einmoe::error);
  CHECK_THROWS_AS(throw einmoe::value_error("v"), einmoe::error);
  CHECK_THROWS_AS(throw einmoe::io_error("i"), einmoe::error);
  CHECK_THROWS_AS(throw einmoe::shape_error("s"), std::runtime_error);
  CHECK_THROWS_WITH(einmoe::detail::raise<einmoe::value_error>("op: x=", 3, " y=", 2.5), "op: x=3 y=2.5");
}
