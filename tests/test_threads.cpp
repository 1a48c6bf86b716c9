#include "check.hpp"
#include "einmoe/core/threads.hpp"

TEST_CASE("set_num_threads validates and takes effect with OpenMP", "[threads]") {
  const int before = einmoe::num_threads();
  CHECK(before >= 1);
  CHECK_THROWS_AS(einmoe::set_num_threads(0), einmoe::value_error);
  einmoe::set_num_threads(1);
  CHECK(einmoe::num_threads() == 1);
  einmoe::set_num_threads(2);
  CHECK(einmoe::num_threads() == (einmoe::has_openmp() ? 2 : 1));
  einmoe::set_num_threads(before);
}
