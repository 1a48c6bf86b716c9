// The main example: one MoE feed-forward layer forward pass on built-in random
// weights, with the balancing loss, per-expert load, dropped fractions and
// time, checked against the dense one-hot formulation of the sources.
//
//   moe_forward [--tokens-per-row 512] [--rows 8] [--model 512] [--hidden 2048]
//               [--experts 16] [--capacity-factor 1.25] [--threads N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <einmoe/einmoe.hpp>

using namespace einmoe;

namespace {

long long flag(int argc, char** argv, const char* name, long long dflt) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) {
      char* end = nullptr;
      const long long v = std::strtoll(argv[i + 1], &end, 10);
      if (*end != '\0' || v < 1) {
        std::fprintf(stderr, "moe_forward: %s needs a positive integer, got \"%s\"\n", name, argv[i + 1]);
        std::exit(2);
      }
      return v;
    }
  return dflt;
}

double real_flag(int argc, char** argv, const char* name, double dflt) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) {
      char* end = nullptr;
      const double v = std::strtod(argv[i + 1], &end);
      if (*end != '\0' || !(v > 0) || !(v < 1e6)) {
        std::fprintf(stderr, "moe_forward: %s needs a positive number, got \"%s\"\n", name, argv[i + 1]);
        std::exit(2);
      }
      return v;
    }
  return dflt;
}

template <class F>
double time_ms(F&& f, int reps) {
  f();  // warm up
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--help") == 0) {
      std::puts(
          "usage: moe_forward [--tokens-per-row 512] [--rows 8] [--model 512] [--hidden 2048] [--experts 16]\n"
          "                   [--capacity-factor 1.25] [--threads N]");
      return 0;
    }
  const index_t B = flag(argc, argv, "--rows", 8), L = flag(argc, argv, "--tokens-per-row", 512);
  const index_t M = flag(argc, argv, "--model", 512), H = flag(argc, argv, "--hidden", 2048);
  const index_t E = flag(argc, argv, "--experts", 16);
  const double cf = real_flag(argc, argv, "--capacity-factor", 1.25);
  if (const long long t = flag(argc, argv, "--threads", 0)) set_num_threads(static_cast<int>(t));

  // Inputs [batch, length, model] are grouped per row: groups of L tokens.
  const index_t C = topk_capacity(L, E, 2, cf);
  Rng rng(2024);
  Tensor<float> wg = rng.normal<float>(Shape{{"model", M}, {"experts", E}});
  Tensor<float> wi = rng.normal<float>(Shape{{"experts", E}, {"model", M}, {"hidden", H}});
  Tensor<float> wo = rng.normal<float>(Shape{{"experts", E}, {"hidden", H}, {"model", M}});
  for (auto& v : wg) v *= 1.0f / std::sqrt(static_cast<float>(M));
  for (auto& v : wi) v *= 1.0f / std::sqrt(static_cast<float>(M));
  for (auto& v : wo) v *= 1.0f / std::sqrt(static_cast<float>(H));
  const auto x = rng.normal<float>(Shape{{"batch", B}, {"group", L}, {"model", M}});
  MoEWeights<float> w;  // views of the tensors above: the layer lays them out once
  w.wg = wg;
  w.experts.wi = wi;
  w.experts.wo = wo;

  Top2Options gating;
  gating.capacity = CapacitySpec::fixed(C);
  MoEOptions opt;
  opt.router = gating;
  MoELayer<float> layer(w, opt);

  std::printf(
      "einmoe %s: MoE layer, %lld x %lld tokens, model %lld, hidden %lld, %lld experts, top-2, capacity %lld "
      "(factor %.2f), %d thread(s)\n",
      einmoe::version, static_cast<long long>(B), static_cast<long long>(L), static_cast<long long>(M),
      static_cast<long long>(H), static_cast<long long>(E), static_cast<long long>(C), cf, num_threads());

  MoEResult<float> out;
  // forward_into reuses the output and the layer's workspace: the steady state of a model.
  const double ms = time_ms([&] { layer.forward_into(out, x); }, 3);
  const auto& s = out.stats;
  std::printf("aux loss            %.5f  (1.0 = perfectly balanced)\n", static_cast<double>(out.aux_loss));
  std::printf("dropped for capacity: first choices %.2f%%, second choices %.2f%%; slots filled %.1f%%\n",
              100 * s.dropped_first(), 100 * s.dropped_second(), 100 * s.fill());
  std::printf("tokens per expert  ");
  for (auto n : s.tokens_per_expert) std::printf(" %lld", static_cast<long long>(n));
  std::printf("\n");
  const double tokens = static_cast<double>(B * L);
  std::printf("sparse forward      %.2f ms  (%.0f tokens/s)\n", ms, tokens / ms * 1e3);

  // The same layer the way the sources compute it: dense one-hot einsums.
  MoEOptions dense_opt = opt;
  dense_opt.dense = true;
  MoEResult<float> ref;
  const double dms = time_ms([&] { ref = moe_forward(x, w, dense_opt); }, 1);
  double max_diff = 0, max_abs = 0;
  for (index_t i = 0; i < ref.outputs.size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::abs(out.outputs[i] - ref.outputs[i])));
    max_abs = std::max(max_abs, static_cast<double>(std::abs(ref.outputs[i])));
  }
  std::printf("dense forward       %.2f ms  (%.1fx slower); max |sparse - dense| = %.2g (max |output| %.3g)\n", dms,
              dms / ms, max_diff, max_abs);
  const bool ok = max_diff <= 1e-4 * std::max(1.0, max_abs);
  std::printf("%s\n", ok ? "sparse and dense agree" : "MISMATCH between sparse and dense");
  return ok ? 0 : 1;
}
