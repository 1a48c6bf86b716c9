// The kernel layer: SIMD loops, quantization, weight banks and the expert
// FFN on every backend and precision, against naive references.
#include <cmath>
#include <cstring>
#include <limits>

#include "check.hpp"
#include "einmoe/einmoe.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {

std::vector<Backend> backends() {
  if (has_dnnl()) return {Backend::dnnl, Backend::eigen};
  return {Backend::eigen};
}

std::vector<float> random_floats(index_t n, double lo, double hi) {
  std::vector<float> v(detail::uz(n));
  std::uniform_real_distribution<double> u(lo, hi);
  for (auto& x : v) x = static_cast<float>(u(naive::rng()));
  return v;
}

double act_ref(Activation a, double x) {
  switch (a) {
    case Activation::relu: return x < 0 ? 0.0 : x;
    case Activation::gelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Activation::gelu_tanh: return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    default: return x / (1.0 + std::exp(-x));
  }
}

double bf16_round(double x) { return static_cast<double>(static_cast<float>(bfloat16(static_cast<float>(x)))); }

/// Quantizes a row the documented way: returns scale; q in [-127, 127].
double quant_row(const std::vector<double>& x, std::vector<int>& q) {
  double amax = 0;
  for (double v : x) amax = std::max(amax, std::fabs(static_cast<double>(static_cast<float>(v))));
  q.assign(x.size(), 0);
  if (amax == 0) return 0;
  const float inv = 127.f / static_cast<float>(amax);
  for (std::size_t i = 0; i < x.size(); ++i)
    q[i] = static_cast<int>(std::max(-127.f, std::min(127.f, std::nearbyint(static_cast<float>(x[i]) * inv))));
  return static_cast<double>(static_cast<float>(amax) / 127.f);
}

struct RefWeights {
  index_t E, M, H;
  std::vector<float> wi, wg, wo, bi, bg, bo;  // [E,M,H], [E,M,H], [E,H,M], [E,H], [E,H], [E,M]
  bool gated, biases;
};

/// y = FFN_e(x) emulating `p`'s rounding points in double.
std::vector<double> ref_ffn(const RefWeights& w, index_t e, const std::vector<float>& x, index_t m, Activation a,
                            Precision p) {
  const index_t M = w.M, H = w.H;
  std::vector<double> y(detail::uz(m * M));
  // weights as the precision stores them, and per-channel scales for int8
  auto weight = [&](const std::vector<float>& W, index_t K, index_t N, index_t k, index_t n,
                    std::vector<double>* scales) {
    const float v = W[detail::uz((e * K + k) * N + n)];
    if (p == Precision::bf16) return bf16_round(v);
    if (p == Precision::int8) {
      double amax = 0;
      for (index_t kk = 0; kk < K; ++kk)
        amax = std::max(amax, std::fabs(static_cast<double>(W[detail::uz((e * K + kk) * N + n)])));
      if (amax == 0) return 0.0;
      const float inv = 127.f / static_cast<float>(amax);
      (*scales)[detail::uz(n)] = static_cast<double>(static_cast<float>(amax) / 127.f);
      return static_cast<double>(std::max(-127.f, std::min(127.f, std::nearbyint(v * inv))));
    }
    return static_cast<double>(v);
  };
  std::vector<double> s_i(detail::uz(H)), s_g(detail::uz(H)), s_o(detail::uz(M));
  for (index_t r = 0; r < m; ++r) {
    std::vector<double> xr(detail::uz(M));
    for (index_t k = 0; k < M; ++k) xr[detail::uz(k)] = x[detail::uz(r * M + k)];
    std::vector<int> xq;
    double xs = 1;
    if (p == Precision::bf16)
      for (auto& v : xr) v = bf16_round(v);
    if (p == Precision::int8) xs = quant_row(xr, xq);
    std::vector<double> h(detail::uz(H));
    for (index_t n = 0; n < H; ++n) {
      double up = 0, gate = 0;
      for (index_t k = 0; k < M; ++k) {
        const double xv = p == Precision::int8 ? xq[detail::uz(k)] : xr[detail::uz(k)];
        up += xv * weight(w.wi, M, H, k, n, &s_i);
        if (w.gated) gate += xv * weight(w.wg, M, H, k, n, &s_g);
      }
      if (p == Precision::int8) up *= xs * s_i[detail::uz(n)], gate *= xs * s_g[detail::uz(n)];
      if (w.biases) up += w.bi[detail::uz(e * H + n)], gate += w.gated ? w.bg[detail::uz(e * H + n)] : 0.0;
      h[detail::uz(n)] = w.gated ? act_ref(a, gate) * up : act_ref(a, up);
      if (p == Precision::bf16) h[detail::uz(n)] = bf16_round(h[detail::uz(n)]);
    }
    std::vector<int> hq;
    double hs = 1;
    if (p == Precision::int8) hs = quant_row(h, hq);
    for (index_t n = 0; n < M; ++n) {
      double acc = 0;
      for (index_t k = 0; k < H; ++k)
        acc += (p == Precision::int8 ? hq[detail::uz(k)] : h[detail::uz(k)]) * weight(w.wo, H, M, k, n, &s_o);
      if (p == Precision::int8) acc *= hs * s_o[detail::uz(n)];
      if (w.biases) acc += w.bo[detail::uz(e * M + n)];
      y[detail::uz(r * M + n)] = acc;
    }
  }
  return y;
}

RefWeights random_ref(index_t E, index_t M, index_t H, bool gated, bool biases) {
  RefWeights w{E, M, H, {}, {}, {}, {}, {}, {}, gated, biases};
  const double a = 1.0 / std::sqrt(static_cast<double>(std::max<index_t>(M, 1)));
  const double b = 1.0 / std::sqrt(static_cast<double>(std::max<index_t>(H, 1)));
  w.wi = random_floats(E * M * H, -a, a);
  w.wg = random_floats(E * M * H, -a, a);
  w.wo = random_floats(E * H * M, -b, b);
  w.bi = random_floats(E * H, -0.1, 0.1);
  w.bg = random_floats(E * H, -0.1, 0.1);
  w.bo = random_floats(E * M, -0.1, 0.1);
  return w;
}

ExpertWeights<float> to_weights(const RefWeights& r) {
  const Dim E{"experts", r.E}, M{"model", r.M}, H{"hidden", r.H};
  ExpertWeights<float> w;
  w.wi = shared_view(Tensor<float>(Shape{E, M, H}, r.wi));
  w.wo = shared_view(Tensor<float>(Shape{E, H, M}, r.wo));
  if (r.gated) w.wi_gate = shared_view(Tensor<float>(Shape{E, M, H}, r.wg));
  if (r.biases) {
    w.bi = shared_view(Tensor<float>(Shape{E, H}, r.bi));
    w.bo = shared_view(Tensor<float>(Shape{E, M}, r.bo));
    if (r.gated) w.bi_gate = shared_view(Tensor<float>(Shape{E, H}, r.bg));
  }
  return w;
}

}  // namespace

TEST_CASE("SIMD kernels: the dispatched versions equal the portable ones", "[kernels][simd]") {
  INFO("elementwise ISA: " << detail::simd::isa_name());
  auto x = random_floats(1000, -300, 300);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  x[4] = std::numeric_limits<float>::infinity();
  x[5] = -0.f;
  x[6] = 1.0f + 0x1p-8f;  // a tie
  for (index_t n : {index_t{0}, index_t{1}, index_t{15}, index_t{16}, index_t{17}, index_t{1000}}) {
    std::vector<std::uint16_t> a(detail::uz(n) + 1, 7), b(detail::uz(n) + 1, 7);
    detail::simd::to_bf16(x.data(), n, a.data());
    detail::simd::generic::to_bf16(x.data(), n, b.data());
    CHECK(a == b);  // the element past n is untouched too
    for (index_t i = 0; i < n; ++i)
      if (!std::isnan(x[detail::uz(i)])) CHECK(a[detail::uz(i)] == bfloat16(x[detail::uz(i)]).bits);
    std::vector<float> back(detail::uz(n)), back2(detail::uz(n));
    detail::simd::from_bf16(a.data(), n, back.data());
    detail::simd::generic::from_bf16(a.data(), n, back2.data());
    CHECK((n == 0 || std::memcmp(back.data(), back2.data(), back.size() * sizeof(float)) == 0));
  }
  auto y = random_floats(999, -5, 5);
  CHECK(detail::simd::max_abs(y.data(), 999) == detail::simd::generic::max_abs(y.data(), 999));
  std::vector<std::uint8_t> q1(999), q2(999);
  detail::simd::quantize_u8(y.data(), 999, 127.f / 5.f, q1.data());
  detail::simd::generic::quantize_u8(y.data(), 999, 127.f / 5.f, q2.data());
  CHECK(q1 == q2);
  // dequantize is defined with an fma: portable and vector versions agree bitwise
  std::vector<std::int32_t> acc(999), comp(999);
  for (std::size_t i = 0; i < acc.size(); ++i)
    acc[i] = static_cast<std::int32_t>(i * 7919 % 100000) - 50000, comp[i] = static_cast<std::int32_t>(i % 37);
  const auto cs = random_floats(999, 0.001, 0.1), bias = random_floats(999, -1, 1);
  std::vector<float> d1(999), d2(999);
  for (const float* b : {static_cast<const float*>(nullptr), bias.data()}) {
    detail::simd::dequantize(acc.data(), 999, comp.data(), 0.37f, cs.data(), b, d1.data());
    detail::simd::generic::dequantize(acc.data(), 999, comp.data(), 0.37f, cs.data(), b, d2.data());
    CHECK(std::memcmp(d1.data(), d2.data(), d1.size() * sizeof(float)) == 0);
  }
  // activations: the vector approximations stay within 3e-7 of the exact functions
  auto z = random_floats(4000, -12, 12);
  for (Activation a : {Activation::relu, Activation::gelu, Activation::gelu_tanh, Activation::silu}) {
    auto v = z;
    detail::simd::activate(a, v.data(), static_cast<index_t>(v.size()));
    for (std::size_t i = 0; i < z.size(); ++i) {
      const double ref = act_ref(a, z[i]);
      REQUIRE(std::fabs(v[i] - ref) <= 3e-7 + 1e-6 * std::fabs(ref));
    }
    float nan = std::numeric_limits<float>::quiet_NaN();
    detail::simd::activate(a, &nan, 1);
    CHECK(std::isnan(nan));  // relu(NaN) is NaN, as in PyTorch
  }
}

TEST_CASE("int8 quantization: symmetric, per output channel, ties to even", "[kernels][quantize]") {
  // channel 0: max 2 -> scale 2/127; channel 1: all zero -> scale 0
  Tensor<float> w(Shape::parse("model:3,hidden:2"), {2.f, 0.f, -1.f, 0.f, 0.5f, 0.f});
  const Int8Tensor q = quantize_int8(w, "model");
  CHECK(q.scales.shape() == Shape::parse("hidden:2"));
  CHECK(q.scales[0] == 2.f / 127.f);
  CHECK(q.scales[1] == 0.f);
  CHECK(q.values.to_vector() == std::vector<std::int8_t>{127, 0, -64, 0, 32, 0});  // -63.5 -> -64 (even), 31.75 -> 32
  const Tensor<float> d = dequantize(q, "model");
  CHECK(d.at({0, 0}) == 2.f);
  CHECK(std::fabs(d.at({1, 0}) + 1.f) <= q.scales[0] / 2);
  // property: |dequantize(quantize(w)) - w| <= scale / 2 everywhere
  auto big = naive::random_tensor<float>(Shape::parse("experts:3,model:17,hidden:5"));
  const Int8Tensor qb = quantize_int8(big, "model");
  const Tensor<float> db = dequantize(qb, "model");
  for (index_t e = 0; e < 3; ++e)
    for (index_t k = 0; k < 17; ++k)
      for (index_t n = 0; n < 5; ++n)
        REQUIRE(std::fabs(db.at({e, k, n}) - big.at({e, k, n})) <= qb.scales.at({e, n}) * 0.5f + 1e-7f);
  // rows: the activation scheme is the same arithmetic, one scale per row
  auto x = naive::random_tensor<float>(Shape::parse("tokens:4,model:9"));
  const Int8Tensor qx = quantize_rows_int8(x, "model");
  CHECK(qx.scales.shape() == Shape::parse("tokens:4"));
  for (index_t r = 0; r < 4; ++r) {
    std::vector<std::uint8_t> u(9);
    const float s = detail::simd::quantize_row_u8(x.data() + r * 9, 9, u.data());
    CHECK(s == qx.scales[r]);
    for (index_t k = 0; k < 9; ++k) CHECK(static_cast<int>(u[detail::uz(k)]) - 128 == qx.values.at({r, k}));
  }
  Tensor<float> bad(Shape::parse("model:2,hidden:1"), {1.f, std::nanf("")});
  CHECK_THROWS_NAMING(quantize_int8(bad, "model"), value_error, "nan");
}

TEST_CASE("MatrixBank lays out any dim order the same, bad weights are named", "[kernels][bank]") {
  auto w = naive::random_tensor<float>(Shape::parse("experts:2,model:5,hidden:7"));
  const Tensor<float> hf = transpose(w, Names({"experts", "hidden", "model"}));  // HF Linear: [out, in]
  for (Backend b : backends())
    for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
      if (!backend_supports(b, p)) {
        // an explicit request is an error naming the weights; automatic falls back to Eigen
        CHECK_THROWS_NAMING(MatrixBank<float>(w, "experts", "model", "hidden", p, b, "wi"), value_error, "wi");
        CHECK(MatrixBank<float>(w, "experts", "model", "hidden", p, Backend::automatic, "wi").backend() ==
              Backend::eigen);
        continue;
      }
      if (b == Backend::dnnl)
        CHECK(MatrixBank<float>(w, "experts", "model", "hidden", p, Backend::automatic, "wi").backend() ==
              Backend::dnnl);
      const MatrixBank<float> a(w, "experts", "model", "hidden", p, b, "wi");
      const MatrixBank<float> c(hf, "experts", "model", "hidden", p, b, "wi");
      CHECK(a.count() == 2);
      CHECK(a.in() == 5);
      CHECK(a.out() == 7);
      CHECK(a.precision() == p);
      for (index_t e = 0; e < 2; ++e) {
        CHECK(std::memcmp(a.data(e), c.data(e), a.matrix_bytes()) == 0);
        if (p == Precision::int8) CHECK(std::memcmp(a.scales(e), c.scales(e), 7 * sizeof(float)) == 0);
      }
    }
  const MatrixBank<float> bf(to_bfloat16(w), "experts", "model", "hidden", Precision::bf16, Backend::eigen, "wi");
  const MatrixBank<float> f(w, "experts", "model", "hidden", Precision::bf16, Backend::eigen, "wi");
  CHECK(std::memcmp(bf.data(1), f.data(1), f.matrix_bytes()) == 0);  // bf16 checkpoint weights kept exactly
  Tensor<float> nan = w;
  nan.at({1, 3, 2}) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_NAMING(MatrixBank<float>(nan, "experts", "model", "hidden", Precision::fp32, Backend::eigen, "wi"),
                      value_error, "\"wi\": element [1, 3, 2]");
  CHECK_THROWS_NAMING(MatrixBank<float>(w, "experts", "model", "ffn", Precision::fp32, Backend::eigen, "wo"),
                      shape_error, "\"wo\"");
  auto wd = naive::random_tensor<double>(Shape::parse("model:3,experts:2"));
  CHECK_THROWS_NAMING(MatrixBank<double>(wd, "", "model", "experts", Precision::int8, Backend::eigen, "wg"),
                      value_error, "double");
  if (!has_dnnl())
    CHECK_THROWS_NAMING(MatrixBank<float>(w, "experts", "model", "hidden", Precision::fp32, Backend::dnnl, "wi"),
                        value_error, "without oneDNN");
}

TEST_CASE("ffn_rows matches a naive reference on every backend, precision and activation", "[kernels][ffn][property]") {
  std::uniform_int_distribution<index_t> size(1, 40);
  for (int trial = 0; trial < 24; ++trial) {
    const index_t E = 1 + trial % 3, M = size(naive::rng()), H = size(naive::rng());
    const bool gated = trial % 2 == 1, biases = trial % 4 >= 2;
    const Activation act = static_cast<Activation>(trial % 4);
    const RefWeights rw = random_ref(E, M, H, gated, biases);
    const ExpertWeights<float> w = to_weights(rw);
    for (Backend b : backends())
      for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
        if (!backend_supports(b, p)) continue;
        ExpertOptions o;
        o.activation = act;
        o.precision = p;
        o.backend = b;
        const PackedExperts<float> pe(w, o);
        CHECK(pe.gated() == gated);
        detail::FfnScratch<float> s;
        for (index_t m : {index_t{1}, index_t{2}, index_t{3}, index_t{4}, index_t{7},
                          std::min<index_t>(pe.kernel().row_block(), 64)}) {
          const auto x = random_floats(m * M, -1.5, 1.5);
          const index_t e = m % E;
          std::vector<float> y(detail::uz(m * M), -7.f);
          detail::ffn_rows(pe.kernel(), e, x.data(), m, y.data(), s);
          const auto ref = ref_ffn(rw, e, x, m, act, p);
          double ymax = 1e-6, err = 0;
          for (std::size_t i = 0; i < y.size(); ++i)
            ymax = std::max(ymax, std::fabs(ref[i])), err = std::max(err, std::fabs(y[i] - ref[i]));
          // fp32: accumulation order only; bf16 / int8: a rounding point may
          // land on the other side of a tie (one bf16 ulp, one int8 step).
          const double tol = p == Precision::fp32 ? 2e-5 : p == Precision::bf16 ? 2e-2 : 2e-2;
          INFO("backend " << to_string(b) << ", precision " << to_string(p) << ", M " << M << ", H " << H << ", rows "
                          << m << ", gated " << gated << ", act " << to_string(act));
          CHECK(err <= tol * ymax);
        }
      }
  }
}

TEST_CASE("decode kernels: many panels, every row count, rows independent of each other", "[kernels][ffn][decode]") {
  // M and H span several 64-column panels with leftovers, so the decode
  // kernels' grouping of panels into 4, 3, 2 or 1 streams (by row count) is
  // exercised; each row's output must not depend on the rows beside it.
  const RefWeights rw = random_ref(2, 64 * 5 + 3, 64 * 7 + 5, true, true);
  const ExpertWeights<float> w = to_weights(rw);
  for (Backend b : backends())
    for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
      if (!backend_supports(b, p)) continue;
      ExpertOptions o;
      o.backend = b;
      o.precision = p;
      o.activation = Activation::silu;
      const PackedExperts<float> pe(w, o);
      detail::FfnScratch<float> s;
      const auto x = random_floats(4 * rw.M, -1, 1);
      std::vector<float> alone(detail::uz(4 * rw.M));
      for (index_t r = 0; r < 4; ++r)
        detail::ffn_rows(pe.kernel(), 1, x.data() + r * rw.M, 1, alone.data() + r * rw.M, s);
      const auto ref = ref_ffn(rw, 1, x, 4, Activation::silu, p);
      double ymax = 0, err = 0;
      for (std::size_t i = 0; i < alone.size(); ++i)
        ymax = std::max(ymax, std::fabs(ref[i])), err = std::max(err, std::fabs(alone[i] - ref[i]));
      INFO(to_string(b) << " " << to_string(p));
      CHECK(err <= (p == Precision::fp32 ? 2e-5 : 2e-2) * ymax);
      // (the decode kernels' promise; Eigen's GEMV and GEMM differ)
      if (b != Backend::dnnl || !detail::decode_path(pe.kernel(), 4)) continue;
      for (index_t m = 2; m <= 4; ++m) {
        std::vector<float> y(detail::uz(m * rw.M));
        detail::ffn_rows(pe.kernel(), 1, x.data(), m, y.data(), s);
        INFO("rows " << m);
        CHECK(std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)) == 0);
      }
    }
}

TEST_CASE("decode kernels: projections cut by panels over threads give ffn_decode's bits", "[kernels][ffn][decode]") {
  const int saved = num_threads();
  for (bool gated : {false, true}) {
    const RefWeights rw = random_ref(3, 64 * 5 + 3, 64 * 7 + 5, gated, true);
    const ExpertWeights<float> w = to_weights(rw);
    for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
      if (!backend_supports(Backend::dnnl, p)) continue;
      ExpertOptions o;
      o.backend = Backend::dnnl;
      o.precision = p;
      o.activation = Activation::gelu;
      const PackedExperts<float> pe(w, o);
      if (!detail::decode_path(pe.kernel(), 4)) continue;
      // calls on experts 0, 2, 1, 0 with 1, 3, 4 and 2 rows
      const std::vector<std::pair<index_t, index_t>> shape{{0, 1}, {2, 3}, {1, 4}, {0, 2}};
      const auto x = random_floats(10 * rw.M, -1, 1);
      std::vector<float> want(x.size());
      detail::FfnScratch<float> s;
      std::vector<index_t> first_row;
      index_t row = 0;
      for (const auto& [e, m] : shape) {
        first_row.push_back(row);
        detail::ffn_rows(pe.kernel(), e, x.data() + row * rw.M, m, want.data() + row * rw.M, s);
        row += m;
      }
      for (int threads : {1, 2, 3})
        for (index_t parts : {1, 2, 3, 7}) {
          set_num_threads(threads);
          std::vector<float> y(x.size(), -1.f);
          std::vector<detail::DecodeCall> calls;
          for (std::size_t i = 0; i < shape.size(); ++i)
            calls.push_back({shape[i].first, shape[i].second, y.data() + first_row[i] * rw.M});
          std::vector<detail::FfnScratch<float>> scratch;
          detail::ffn_decode_split(pe.kernel(), calls, parts, scratch, [&](index_t i, detail::FfnScratch<float>&) {
            return x.data() + first_row[detail::uz(i)] * rw.M;
          });
          INFO(to_string(p) << (gated ? " gated" : " plain") << ", " << threads << " threads, " << parts << " parts");
          CHECK(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) == 0);
        }
    }
  }
  set_num_threads(saved);
}

TEST_CASE("int8 experts: oneDNN and Eigen give bitwise the same outputs", "[kernels][ffn]") {
  if (!backend_supports(Backend::dnnl, Precision::int8)) return;  // no oneDNN, or no VNNI
  for (int trial = 0; trial < 6; ++trial) {
    const RefWeights rw = random_ref(2, 24 + trial, 40 - trial, trial % 2 == 0, trial % 3 == 0);
    const ExpertWeights<float> w = to_weights(rw);
    ExpertOptions o;
    o.precision = Precision::int8;
    o.activation = static_cast<Activation>(trial % 4);
    o.backend = Backend::dnnl;
    const PackedExperts<float> a(w, o);
    o.backend = Backend::eigen;
    const PackedExperts<float> b(w, o);
    detail::FfnScratch<float> s;
    const index_t m = 1 + 9 * trial;
    const auto x = random_floats(m * rw.M, -2, 2);
    std::vector<float> ya(detail::uz(m * rw.M)), yb(ya.size());
    detail::ffn_rows(a.kernel(), 1, x.data(), m, ya.data(), s);
    detail::ffn_rows(b.kernel(), 1, x.data(), m, yb.data(), s);
    CHECK(std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("ffn_rows: every row count of a block works, repeated calls are bitwise equal, errors", "[kernels][ffn]") {
  const RefWeights rw = random_ref(2, 33, 65, true, true);
  const ExpertWeights<float> w = to_weights(rw);
  for (Backend b : backends()) {
    ExpertOptions o;
    o.backend = b;
    o.activation = Activation::silu;
    const PackedExperts<float> pe(w, o);
    detail::FfnScratch<float> s;
    const index_t block = std::min<index_t>(pe.kernel().row_block(), 70);
    const auto x = random_floats(block * 33, -1, 1);
    for (index_t m = 1; m <= block; m += (m < 8 ? 1 : 7)) {
      std::vector<float> y1(detail::uz(m * 33)), y2(y1.size());
      detail::ffn_rows(pe.kernel(), 0, x.data(), m, y1.data(), s);
      detail::ffn_rows(pe.kernel(), 0, x.data(), m, y2.data(), s);
      REQUIRE(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
      const auto ref = ref_ffn(rw, 0, x, m, Activation::silu, Precision::fp32);
      for (std::size_t i = 0; i < y1.size(); ++i) REQUIRE(naive::close(static_cast<double>(y1[i]), ref[i], 1e-4, 1e-5));
    }
    std::vector<float> y(detail::uz((pe.kernel().row_block() + 1) * 33));
    std::vector<float> xx(y.size());
    CHECK_THROWS_NAMING(detail::ffn_rows(pe.kernel(), 0, xx.data(), pe.kernel().row_block() + 1, y.data(), s),
                        value_error, "rows");
    CHECK_THROWS_NAMING(detail::ffn_rows(pe.kernel(), 2, xx.data(), 1, y.data(), s), value_error, "expert 2");
  }
  ExpertOptions o;
  o.precision = Precision::bf16;
  o.dropout = 0.1;
  CHECK_THROWS_NAMING(PackedExperts<float>(w, o), value_error, "fp32");
  ExpertWeights<float> nan = w;
  Tensor<float> bo = w.bo->copy();  // the weights are views: a bad copy of bo
  bo.at({1, 4}) = std::nanf("");
  nan.bo = bo;
  CHECK_THROWS_NAMING(PackedExperts<float>(nan, ExpertOptions{}), value_error, "bo");
}

TEST_CASE("ffn_rows and linear_rows do not depend on where the caller's rows sit in memory", "[kernels][determinism]") {
  // Small sizes take Eigen's coefficient-based product, whose vector
  // reduction would peel by alignment: inputs are realigned first.
  ExpertWeights<double> w;
  w.wi = shared_view(naive::random_tensor<double>(Shape::parse("experts:1,model:6,hidden:8")));
  w.wo = shared_view(naive::random_tensor<double>(Shape::parse("experts:1,hidden:8,model:6")));
  const PackedExperts<double> pe(w, ExpertOptions{});
  const MatrixBank<double> router(w.wi, "experts", "model", "hidden", Precision::fp32, Backend::eigen, "wg");
  detail::FfnScratch<double> s;
  std::vector<double> storage(64, 0.0), y0(18), y(18), l0(24), l(24);
  const auto rows = naive::random_tensor<double>(Shape::parse("r:3,model:6"));
  for (std::size_t shift = 0; shift < 8; ++shift) {
    double* x = storage.data() + shift;
    std::copy(rows.begin(), rows.end(), x);
    detail::ffn_rows(pe.kernel(), 0, x, 3, shift == 0 ? y0.data() : y.data(), s);
    detail::linear_rows(router, 0, x, 3, shift == 0 ? l0.data() : l.data(), s);
    if (shift == 0) continue;
    CHECK(std::memcmp(y.data(), y0.data(), y.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(l.data(), l0.data(), l.size() * sizeof(double)) == 0);
  }
}

TEST_CASE("float kernels on every backend and precision ignore the alignment of rows and outputs",
          "[kernels][determinism]") {
  const RefWeights rw = random_ref(1, 20, 36, true, true);
  const ExpertWeights<float> w = to_weights(rw);
  const auto rows = random_floats(5 * 20, -1, 1);
  for (Backend b : backends())
    for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
      if (!backend_supports(b, p)) continue;
      ExpertOptions o;
      o.backend = b;
      o.precision = p;
      o.activation = Activation::gelu;
      const PackedExperts<float> pe(w, o);
      detail::FfnScratch<float> s;
      std::vector<float> in(256), out(256), ref(100);
      const index_t m = p == Precision::bf16 ? 3 : 5;  // the decode path too
      for (std::size_t shift = 0; shift < 16; ++shift) {
        std::copy(rows.begin(), rows.end(), in.begin() + static_cast<std::ptrdiff_t>(shift));
        detail::ffn_rows(pe.kernel(), 0, in.data() + shift, m, shift == 0 ? ref.data() : out.data() + (15 - shift), s);
        if (shift == 0) continue;
        INFO(to_string(b) << " " << to_string(p) << " shift " << shift);
        CHECK(std::memcmp(out.data() + (15 - shift), ref.data(), static_cast<std::size_t>(m * 20) * sizeof(float)) ==
              0);
      }
    }
}
