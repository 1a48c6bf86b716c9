// A tiny decoder-only MoE transformer on built-in random weights, decoding a
// batch with Mesh TF's beam search (KV cache carried as beam state) and with
// greedy decoding. Prints the sequences, scores and per-layer expert load.
#include <cstdio>

#include "decoder/tiny_moe_decoder.hpp"

using namespace einmoe;

int main() {
  tiny::Config cfg;
  cfg.start_tokens = {5, 23};  // one start token per batch row
  tiny::MoEDecoder<double> model(cfg);
  const index_t B = 2, K = 3, L = 12;
  std::printf(
      "tiny MoE decoder: %lld layers, model %lld, %lld heads, %lld experts (top-2), vocab %lld; EOS = 1; start tokens "
      "5, 23\n",
      static_cast<long long>(cfg.layers), static_cast<long long>(cfg.model), static_cast<long long>(cfg.heads),
      static_cast<long long>(cfg.experts), static_cast<long long>(cfg.vocab));

  // Beam search: the logits function runs one cached step for all [batch, beam] rows.
  BeamLogitsFn<double> beam_fn = [&](index_t step, const TensorView<const std::int64_t>& ids,
                                     std::vector<Tensor<double>>& kv) { return model.step_logits(step, ids, kv); };
  Tensor<std::int64_t> init(Shape{{"batch", B}, {"beam", K}, {"length", L}});
  const auto r =
      beam_search<double>(beam_fn, init, 0.6, BeamSearchOptions{}, model.empty_cache(Shape{{"batch", B}, {"beam", K}}));
  std::printf("\nbeam search (beam %lld, alpha 0.6): %lld steps\n", static_cast<long long>(K),
              static_cast<long long>(r.steps));
  for (index_t b = 0; b < B; ++b)
    for (index_t k = 0; k < K; ++k) {
      std::printf("  row %lld beam %lld  score %8.4f  ids", static_cast<long long>(b), static_cast<long long>(k),
                  r.scores[b * K + k]);
      for (index_t p = 0; p < L; ++p) std::printf(" %2lld", static_cast<long long>(r.ids[(b * K + k) * L + p]));
      std::printf("\n");
    }
  auto print_load = [&](const char* what) {
    for (std::size_t l = 0; l < model.expert_load().size(); ++l) {
      std::printf("  %s layer %zu expert load:", what, l);
      for (auto n : model.expert_load()[l]) std::printf(" %lld", static_cast<long long>(n));
      std::printf("\n");
    }
  };
  print_load("beam");
  model.reset_load();

  // Greedy decoding, argmax and sampled.
  GreedyLogitsFn<double> greedy_fn = [&](index_t step, const TensorView<const std::int64_t>& ids,
                                         std::vector<Tensor<double>>& kv) { return model.step_logits(step, ids, kv); };
  Tensor<std::int64_t> g0(Shape{{"batch", B}, {"length", L}});
  for (double temperature : {0.0, 1.0}) {
    GreedyOptions o;
    o.temperature = temperature;
    o.seed = 7;
    const auto g = greedy_decode<double>(greedy_fn, g0, o, std::nullopt, model.empty_cache(Shape{{"batch", B}}));
    std::printf("\ngreedy (temperature %.1f): %lld steps\n", temperature, static_cast<long long>(g.steps));
    for (index_t b = 0; b < B; ++b) {
      std::printf("  row %lld  ids", static_cast<long long>(b));
      for (index_t p = 0; p < L; ++p) std::printf(" %2lld", static_cast<long long>(g.ids[b * L + p]));
      std::printf("\n");
    }
  }
  print_load("greedy");

  // The KV cache gives the same logits as the full prefix.
  const auto full = model.full_logits(r.ids);
  std::vector<Tensor<double>> kv = model.empty_cache(Shape{{"batch", B}, {"beam", K}});
  double max_diff = 0;
  for (index_t step = 0; step < L; ++step) {
    const auto s = model.step_logits(step, r.ids, kv);
    const index_t V = cfg.vocab;
    for (index_t row = 0; row < B * K; ++row)
      for (index_t v = 0; v < V; ++v)
        max_diff = std::max(max_diff, std::abs(s[row * V + v] - full[(row * L + step) * V + v]));
  }
  std::printf("\ncached vs full-prefix logits: max |difference| = %.3g\n", max_diff);
  return max_diff < 1e-9 ? 0 : 1;
}
