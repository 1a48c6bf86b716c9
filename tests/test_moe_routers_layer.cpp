// The MoE layer with today's routers (topk, expert-choice), gated experts and
// shared experts: hand-worked outputs, sparse == dense, precisions, thread
// counts, errors.
#include <cmath>
#include <cstring>

#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {

struct ThreadGuard {
  int saved = num_threads();
  ~ThreadGuard() { set_num_threads(saved); }
};

template <class T>
MoEWeights<T> random_layer(index_t M, index_t H, index_t E, bool gated, index_t Hs, bool shared_gated,
                           bool shared_gate) {
  MoEWeights<T> w;
  w.wg = shared_view(naive::random_tensor<T>(Shape{{"model", M}, {"experts", E}}));
  w.experts.wi = shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, -0.5, 0.5));
  w.experts.wo = shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, -0.5, 0.5));
  if (gated)
    w.experts.wi_gate =
        shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, -0.5, 0.5));
  if (Hs > 0) {
    SharedExpertWeights<T> s;
    // (dims in a different order than the routed experts': found by name)
    s.wi = shared_view(naive::random_tensor<T>(Shape{{"hidden", Hs}, {"model", M}}, -0.5, 0.5));
    s.wo = shared_view(naive::random_tensor<T>(Shape{{"hidden", Hs}, {"model", M}}, -0.5, 0.5));
    if (shared_gated) s.wi_gate = shared_view(naive::random_tensor<T>(Shape{{"model", M}, {"hidden", Hs}}, -0.5, 0.5));
    if (shared_gate) s.gate = shared_view(naive::random_tensor<T>(Shape{{"model", M}}, -0.5, 0.5));
    w.shared = std::move(s);
  }
  return w;
}

double act(Activation a, double v) {
  switch (a) {
    case Activation::relu: return v > 0 ? v : 0;
    case Activation::silu: return v / (1 + std::exp(-v));
    default: return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));  // gelu (tests below use relu/silu/gelu)
  }
}

/// FFN on one token with plain loops, weights read by name through at().
double naive_ffn(const Tensor<double>& x, index_t t, index_t e, const ExpertWeights<double>& w, Activation a,
                 index_t j_out) {
  const index_t M = w.wi.size_of("model"), H = w.wi.size_of("hidden");
  double y = 0;
  for (index_t h = 0; h < H; ++h) {
    double u = 0, g = 0;
    for (index_t m = 0; m < M; ++m) {
      u += x[t * M + m] * w.wi.at({e, m, h});
      if (w.wi_gate) g += x[t * M + m] * w.wi_gate->at({e, m, h});
    }
    const double hv = w.wi_gate ? act(a, g) * u : act(a, u);
    y += hv * w.wo.at({e, h, j_out});
  }
  return y;
}

}  // namespace

TEST_CASE("MoE layer, topk router with a gated shared expert: hand-checked against plain loops",
          "[moe][routers][shared]") {
  // Mixtral/Qwen2-MoE shape of a block: softmax top-2, normalized, gated
  // (SwiGLU) experts, a gated shared expert scaled by sigmoid(x . gate).
  const index_t T = 5, M = 4, H = 3, E = 4, Hs = 6;
  auto w = random_layer<double>(M, H, E, true, Hs, true, true);
  const auto x = naive::random_tensor<double>(Shape{{"batch", 1}, {"group", T}, {"model", M}});
  MoEOptions o;
  o.router = TopKOptions{};
  std::get<TopKOptions>(o.router).k = 2;
  std::get<TopKOptions>(o.router).normalize = TopKNormalize::topk;
  o.activation = Activation::silu;
  const auto r = MoELayer<double>(w, o).forward(x);
  // the shared expert's weights as [1, ...] expert weights, for naive_ffn
  ExpertWeights<double> sw;
  sw.wi = shared_view(transpose(w.shared->wi, Shape{{"model", M}, {"hidden", Hs}}));
  sw.wi.set_shape(Shape{{"experts", 1}, {"model", M}, {"hidden", Hs}});
  sw.wi_gate = *w.shared->wi_gate;
  sw.wi_gate->set_shape(Shape{{"experts", 1}, {"model", M}, {"hidden", Hs}});
  sw.wo = w.shared->wo;
  sw.wo.set_shape(Shape{{"experts", 1}, {"hidden", Hs}, {"model", M}});
  for (index_t t = 0; t < T; ++t) {
    std::vector<double> logit(E), p(E);
    double mx = -1e300, z = 0, zg = 0;
    for (index_t e = 0; e < E; ++e) {
      for (index_t m = 0; m < M; ++m) logit[e] += x[t * M + m] * w.wg.at({m, e});
      mx = std::max(mx, logit[e]);
    }
    for (index_t e = 0; e < E; ++e) z += std::exp(logit[e] - mx);
    for (index_t e = 0; e < E; ++e) p[e] = std::exp(logit[e] - mx) / z;
    index_t a = 0;
    for (index_t e = 1; e < E; ++e)
      if (p[e] > p[a]) a = e;
    index_t b = a == 0 ? 1 : 0;
    for (index_t e = 0; e < E; ++e)
      if (e != a && p[e] > p[b]) b = e;
    for (index_t m = 0; m < M; ++m) zg += x[t * M + m] * (*w.shared->gate)[m];
    const double sg = 1 / (1 + std::exp(-zg));
    for (index_t j = 0; j < M; ++j) {
      const double want = (p[a] * naive_ffn(x, t, a, w.experts, o.activation, j) +
                           p[b] * naive_ffn(x, t, b, w.experts, o.activation, j)) /
                              (p[a] + p[b] + 1e-20) +
                          sg * naive_ffn(x, t, 0, sw, o.activation, j);
      INFO("token " << t << " col " << j);
      CHECK(naive::close(r.outputs[t * M + j], want, 1e-12, 1e-12));
    }
  }
  CHECK(r.stats.tokens_per_expert.size() == static_cast<std::size_t>(E));
}

TEMPLATE_TEST_CASE("MoE layer: topk and expert-choice routers, sparse equals dense, with gated and shared experts",
                   "[moe][routers][property]", float, double) {
  const double tol = std::is_same<TestType, float>::value ? 1e-5 : 1e-12;
  auto& g = naive::rng();
  for (int trial = 0; trial < 40; ++trial) {
    const index_t G = std::uniform_int_distribution<index_t>(1, 3)(g),
                  S = std::uniform_int_distribution<index_t>(1, 12)(g);
    const index_t E = 2 * std::uniform_int_distribution<index_t>(1, 3)(g);
    const bool shared = trial % 3 != 0;
    const auto w = random_layer<TestType>(5, 6, E, trial % 2 == 0, shared ? 7 : 0, trial % 4 < 2, trial % 5 < 3);
    const auto x = naive::random_tensor<TestType>(Shape{{"batch", G}, {"group", S}, {"model", 5}});
    MoEOptions o;
    o.activation = static_cast<Activation>(trial % 4);
    if (trial % 4 == 3) {
      o.router = ExpertChoiceOptions{};
      std::get<ExpertChoiceOptions>(o.router).capacity =
          CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S)(g));
    } else {
      o.router = TopKOptions{};
      std::get<TopKOptions>(o.router).k = std::uniform_int_distribution<index_t>(1, E)(g);
      std::get<TopKOptions>(o.router).score = trial % 2 ? Score::sigmoid : Score::softmax;
      std::get<TopKOptions>(o.router).normalize = static_cast<TopKNormalize>(trial % 3);
      std::get<TopKOptions>(o.router).priority = static_cast<Priority>((trial / 3) % 3);
      std::get<TopKOptions>(o.router).scale = trial % 7 == 0 ? 2.5 : 1.0;
      if (trial % 5 == 1) {
        std::get<TopKOptions>(o.router).bias.resize(static_cast<std::size_t>(E));
        for (auto& b : std::get<TopKOptions>(o.router).bias) b = std::uniform_real_distribution<double>(-0.3, 0.3)(g);
      }
      auto& t = std::get<TopKOptions>(o.router);
      if (trial % 6 == 2 && E >= 4) t.expert_groups = 2, t.topk_expert_groups = 1, t.k = std::min<index_t>(t.k, E / 2);
      if (trial % 2 == 0)
        std::get<TopKOptions>(o.router).capacity =
            CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S + 1)(g));
    }
    const auto a = moe_forward(x, w, o);
    o.dense = true;
    const auto b = moe_forward(x, w, o);
    INFO("trial " << trial << " router " << router_name(o.router));
    REQUIRE(naive::all_close(a.outputs, b.outputs, tol, tol));
    REQUIRE(naive::close(a.aux_loss, b.aux_loss, tol, tol));
    REQUIRE(naive::close(a.z_loss, b.z_loss, tol, tol));
    REQUIRE(a.stats.tokens_per_expert == b.stats.tokens_per_expert);
    // The shared expert adds sigmoid(x . gate) * FFN_shared(x) to every token
    // (computed here with plain loops, by name).
    if (shared) {
      auto w0 = w;
      w0.shared.reset();
      o.dense = false;
      const auto without = moe_forward(x, w0, o).outputs;
      const auto& sw = *w.shared;
      const index_t Hs = sw.wi.size_of("hidden");
      auto activate = [&](double v) {
        switch (o.activation) {
          case Activation::relu: return v > 0 ? v : 0.0;
          case Activation::gelu: return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
          case Activation::gelu_tanh:
            return 0.5 * v * (1 + std::tanh(std::sqrt(2.0 / 3.14159265358979323846) * (v + 0.044715 * v * v * v)));
          default: return v / (1 + std::exp(-v));
        }
      };
      for (index_t t = 0; t < G * S; ++t) {
        std::vector<double> h(static_cast<std::size_t>(Hs));
        for (index_t j = 0; j < Hs; ++j) {
          double up = 0, gate = 0;
          for (index_t m = 0; m < 5; ++m) {
            up += double(x[t * 5 + m]) * double(sw.wi.at({j, m}));
            if (sw.wi_gate) gate += double(x[t * 5 + m]) * double(sw.wi_gate->at({m, j}));
          }
          h[static_cast<std::size_t>(j)] = sw.wi_gate ? activate(gate) * up : activate(up);
        }
        double scale = 1;
        if (sw.gate) {
          double z = 0;
          for (index_t m = 0; m < 5; ++m) z += double(x[t * 5 + m]) * double((*sw.gate)[m]);
          scale = 1 / (1 + std::exp(-z));
        }
        for (index_t m = 0; m < 5; ++m) {
          double y = 0;
          for (index_t j = 0; j < Hs; ++j) y += h[static_cast<std::size_t>(j)] * double(sw.wo.at({j, m}));
          CHECK(std::fabs(double(a.outputs[t * 5 + m]) - double(without[t * 5 + m]) - scale * y) <= 10 * tol);
        }
      }
    }
  }
}

TEST_CASE("MoE layer: shared expert in bf16 and int8 stays close to fp32, bitwise equal on any thread count",
          "[moe][shared][precision][determinism]") {
  ThreadGuard guard;
  const auto w = random_layer<float>(40, 48, 4, true, 72, true, true);
  const auto x = naive::random_tensor<float>(Shape::parse("batch:2,group:300,model:40"));
  MoEOptions o;
  o.router = TopKOptions{};
  std::get<TopKOptions>(o.router).k = 2;
  std::get<TopKOptions>(o.router).normalize = TopKNormalize::topk;
  o.activation = Activation::silu;
  const auto ref = MoELayer<float>(w, o).forward(x);
  float ymax = 0;
  for (float v : ref.outputs) ymax = std::max(ymax, std::fabs(v));
  for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
    o.precision = p;
    set_num_threads(1);
    const MoELayer<float> layer(w, o);
    const auto one = layer.forward(x);
    float err = 0;
    for (index_t i = 0; i < one.outputs.size(); ++i) err = std::max(err, std::fabs(one.outputs[i] - ref.outputs[i]));
    INFO("precision " << to_string(p));
    CHECK(err <= (p == Precision::fp32 ? 0.f : p == Precision::bf16 ? 1e-2f : 3e-2f) * ymax);
    CHECK(one.stats.tokens_per_expert == ref.stats.tokens_per_expert);
    for (int t : {2, 3}) {
      set_num_threads(t);
      const auto r = layer.forward(x);
      CHECK(std::memcmp(r.outputs.data(), one.outputs.data(),
                        static_cast<std::size_t>(one.outputs.size()) * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("MoE layer: ungrouped inputs with the topk router and a shared expert", "[moe][routers][shared]") {
  const auto w = random_layer<double>(6, 5, 4, false, 3, false, true);
  const auto x = naive::random_tensor<double>(Shape::parse("batch:2,length:7,model:6"));
  MoEOptions o;
  o.router = TopKOptions{};
  std::get<TopKOptions>(o.router).k = 1;
  o.max_group_size = 4;  // 14 tokens -> groups of 4 or fewer
  const auto r = moe_forward(x, w, o);
  CHECK(r.outputs.shape() == x.shape());
  o.dense = true;
  CHECK(naive::all_close(r.outputs, moe_forward(x, w, o).outputs, 1e-12, 1e-12));
}

TEST_CASE("MoE layer: router and shared-expert errors name the option or tensor", "[moe][routers][errors]") {
  auto w = random_layer<float>(4, 3, 4, false, 5, false, true);
  const auto x = naive::random_tensor<float>(Shape::parse("batch:1,group:3,model:4"));
  MoEOptions o;
  o.router = TopKOptions{};
  o.dims.experts = "expert";  // one name for every router, checked against the weights
  CHECK_THROWS_NAMING(MoELayer<float>(w, o), shape_error, "\"expert\"");
  o.dims.experts = "experts";
  std::get<TopKOptions>(o.router).k = 5;
  CHECK_THROWS_NAMING(MoELayer<float>(w, o), value_error, "k");
  std::get<TopKOptions>(o.router).k = 2;
  GatingInputs<float> extras;
  extras.importance = shared_view(Tensor<float>(Shape::parse("batch:1,group:3"), 1.f));
  CHECK_THROWS_NAMING(MoELayer<float>(w, o).forward(x, extras), value_error, "top2");
  o.router = ExpertChoiceOptions{};
  std::get<ExpertChoiceOptions>(o.router).capacity = CapacitySpec::fixed(4);  // > 3 tokens
  CHECK_THROWS_NAMING(MoELayer<float>(w, o).forward(x), value_error, "capacity");
  o.router = TopKOptions{};
  auto bad = w;
  bad.shared->wo = shared_view(naive::random_tensor<float>(Shape::parse("hidden:6,model:4")));
  CHECK_THROWS_NAMING(MoELayer<float>(bad, o), shape_error, "shared.wo");
  bad = w;
  bad.shared->gate = shared_view(naive::random_tensor<float>(Shape::parse("model:3")));
  CHECK_THROWS_NAMING(MoELayer<float>(bad, o), shape_error, "shared.gate");
  bad = w;
  bad.shared->wi = shared_view(naive::random_tensor<float>(Shape::parse("model:4,inner:5")));
  CHECK_THROWS_NAMING(MoELayer<float>(bad, o), shape_error, "shared.wi");
  bad = w;  // (the weights are views: bad copies of the tensors)
  Tensor<float> gate = w.shared->gate->copy();
  gate[1] = std::nanf("");
  bad.shared->gate = gate;
  CHECK_THROWS_NAMING(MoELayer<float>(bad, o), value_error, "shared.gate");
  bad = w;
  Tensor<float> wi = w.shared->wi.copy();
  wi[3] = INFINITY;
  bad.shared->wi = wi;
  CHECK_THROWS_NAMING(MoELayer<float>(bad, o), value_error, "shared.wi");
  CHECK(std::holds_alternative<ExpertChoiceOptions>(parse_router("expert-choice")));
  CHECK(router_name(parse_router("expert-choice")) == std::string("expert-choice"));
  CHECK_THROWS_NAMING(parse_router("top3"), value_error, "top3");
}
