#include "check.hpp"
#include "einmoe/core/random.hpp"

using namespace einmoe;

TEST_CASE("Rng is reproducible and its draws have the right ranges and moments", "[random]") {
  Rng a(7), b(7), c(8);
  CHECK(a.next_u64() == b.next_u64());
  CHECK(a.next_u64() != c.next_u64());
  Rng r(1);
  const int n = 200000;
  double su = 0, sg = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const double u = r.uniform();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    su += u;
    const double uo = r.uniform_open();
    REQUIRE(uo > 0.0);
    REQUIRE(uo < 1.0);
    sg += r.gumbel();
    const double z = r.normal();
    sn += z;
    sn2 += z * z;
  }
  CHECK(su / n == Approx(0.5).margin(0.01));
  CHECK(sg / n == Approx(0.5772156649).margin(0.02));  // Euler-Mascheroni
  CHECK(sn / n == Approx(0.0).margin(0.01));
  CHECK(sn2 / n == Approx(1.0).margin(0.02));
}

TEST_CASE("Rng fills tensors in row-major order, uniform_at is stateless", "[random]") {
  Rng r(3);
  const auto t = r.uniform<double>(Shape::parse("a:2,b:3"));
  Rng r2(3);
  for (index_t i = 0; i < 6; ++i) CHECK(t[i] == r2.uniform());
  CHECK(Rng::uniform_at(5, 10) == Rng::uniform_at(5, 10));
  CHECK(Rng::uniform_at(5, 10) != Rng::uniform_at(5, 11));
  CHECK(Rng::uniform_at(5, 10) != Rng::uniform_at(6, 10));
  CHECK(Rng(2).gumbel<float>(Shape::parse("a:4")).shape() == Shape::parse("a:4"));
}
