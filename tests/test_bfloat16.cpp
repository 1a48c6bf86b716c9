#include <cmath>
#include <cstring>
#include <limits>

#include "check.hpp"
#include "einmoe/core/bfloat16.hpp"
#include "einmoe/core/random.hpp"
#include "einmoe/ops/elementwise.hpp"

using namespace einmoe;

namespace {
float from_bits32(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
std::uint32_t bits32(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// Reference: the nearest bfloat16 by exhaustive comparison of the two
// neighbours in double (ties to the even mantissa).
std::uint16_t nearest(double d) {
  const float f = static_cast<float>(d);
  const std::uint32_t lo = bits32(f) & 0xffff0000u;
  std::uint16_t best = 0;
  double best_err = -1;
  for (std::uint32_t cand : {lo - 0x10000u, lo, lo + 0x10000u}) {
    const double v = from_bits32(cand);
    if (std::isnan(v)) continue;
    const double err = std::fabs(v - d);
    if (best_err < 0 || err < best_err || (err == best_err && ((cand >> 16) & 1u) == 0)) {
      best = static_cast<std::uint16_t>(cand >> 16);
      best_err = err;
    }
  }
  return best;
}
}  // namespace

TEST_CASE("bfloat16 rounds to nearest, ties to even, widening is exact", "[bfloat16]") {
  CHECK(bfloat16(1.0f).bits == 0x3f80);
  CHECK(static_cast<float>(bfloat16(1.0f)) == 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0)
  CHECK(bfloat16(1.0f + 0x1p-8f).bits == 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even)
  CHECK(bfloat16(1.0f + 3 * 0x1p-8f).bits == 0x3f82);
  CHECK(bfloat16(1.0f + 0x1p-8f + 0x1p-20f).bits == 0x3f81);  // above the tie: up
  CHECK(static_cast<float>(bfloat16(0.1f)) == 0.10009765625f);
  CHECK(bfloat16(-2.5f).bits == 0xc020);
  // overflow to infinity, NaN stays NaN, infinities and zeros keep their sign
  CHECK(bfloat16(std::numeric_limits<float>::max()).bits == 0x7f80);
  CHECK(std::isnan(static_cast<float>(bfloat16(std::nanf("")))));
  CHECK(std::isnan(static_cast<float>(bfloat16(from_bits32(0x7f800001u)))));  // signalling NaN whose top half is inf
  CHECK(bfloat16(-std::numeric_limits<float>::infinity()).bits == 0xff80);
  CHECK(bfloat16(-0.0f).bits == 0x8000);
  // every bfloat16 round-trips through float exactly
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const bfloat16 h = bfloat16::from_bits(static_cast<std::uint16_t>(b));
    const float f = static_cast<float>(h);
    if (std::isnan(f)) continue;
    REQUIRE(bfloat16(f).bits == h.bits);
    REQUIRE(bfloat16(static_cast<double>(f)).bits == h.bits);
  }
}

TEST_CASE("bfloat16 from float and from double equal the nearest neighbour", "[bfloat16][property]") {
  Rng rng(7);
  for (int i = 0; i < 200000; ++i) {
    const double mag = std::ldexp(rng.uniform() + 0.5, static_cast<int>(rng.next_u64() % 260) - 140);
    const double d = (rng.next_u64() & 1) ? -mag : mag;
    if (std::fabs(d) >= 0x1.fep127) continue;  // beyond the largest finite bfloat16 + half ulp
    const float f = static_cast<float>(d);
    REQUIRE(bfloat16(f).bits == nearest(f));
    REQUIRE(bfloat16(d).bits == nearest(d));
  }
  // The double path rounds once: a double just above a float tie must round up,
  // where rounding through float first would hit the tie and go to even.
  const double above_tie = 1.0 + 0x1p-8 + 0x1p-40;
  CHECK(bfloat16(above_tie).bits == 0x3f81);
  CHECK(bfloat16(static_cast<float>(above_tie)).bits == 0x3f80);
}

TEST_CASE("Tensor<bfloat16> holds and converts weights", "[bfloat16]") {
  Tensor<float> w(Shape::parse("model:2,hidden:3"), {0.1f, -1.f, 3.f, 1e-3f, 65504.f, -0.f});
  Tensor<bfloat16> h = to_bfloat16(w);
  CHECK(h.shape() == w.shape());
  CHECK(sizeof(*h.data()) == 2);
  Tensor<float> back = from_bfloat16<float>(h);
  for (index_t i = 0; i < w.size(); ++i) CHECK(back[i] == static_cast<float>(bfloat16(w[i])));
  Tensor<double> viacast = cast<double>(h);
  CHECK(viacast[1] == -1.0);
  CHECK(cast<bfloat16>(w)[0].bits == bfloat16(0.1f).bits);
}
