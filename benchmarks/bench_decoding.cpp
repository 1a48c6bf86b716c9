// Masks and one beam-search step at a realistic size.
#include "bench_common.hpp"

namespace {

using namespace bench;

void BM_CausalMaskBias(benchmark::State& state) {
  set_threads(state, 1);
  const index_t L = state.range(0);
  for (auto _ : state) {
    auto b = to_bias<float>(causal_mask(Dim("length", L)));
    benchmark::DoNotOptimize(b.data());
  }
  state.counters["elements/s"] =
      benchmark::Counter(double(L * L) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_MaskedSoftmax(benchmark::State& state) {
  set_threads(state, 1);
  const index_t L = state.range(0);
  const auto logits = Rng(1).normal<float>(Shape{{"heads", 8}, {"length", L}, {"memory_length", L}});
  const auto mask = causal_mask(Dim("length", L));
  for (auto _ : state) {
    auto p = masked_softmax(logits, mask, "memory_length");
    benchmark::DoNotOptimize(p.data());
  }
  state.counters["elements/s"] =
      benchmark::Counter(double(8 * L * L) * double(state.iterations()), benchmark::Counter::kIsRate);
}

// One step of beam search: batch 8, beam 4, vocab 32000 (log_softmax, top
// 2*beam over beam x vocab, grow alive and finished, state reordering).
void BM_BeamSearchStep(benchmark::State& state) {
  set_threads(state);
  const index_t B = 8, K = 4, V = 32000, L = 16;
  const auto logits = Rng(2).normal<float>(Shape{{"batch", B}, {"beam", K}, {"vocab", V}});
  BeamLogitsFn<float> fn = [&](index_t, const TensorView<const std::int64_t>&, std::vector<Tensor<float>>&) {
    return logits;
  };
  const Tensor<std::int64_t> init(Shape{{"batch", B}, {"beam", K}, {"length", L}});
  BeamSearchOptions o;
  o.decode_length = 1;
  std::vector<Tensor<float>> states{Tensor<float>(Shape{{"batch", B}, {"beam", K}, {"cache", 4096}})};
  for (auto _ : state) {
    auto r = beam_search<float>(fn, init, 0.6f, o, states);
    benchmark::DoNotOptimize(r.ids.data());
  }
  state.counters["candidates/s"] =
      benchmark::Counter(double(B * K * V) * double(state.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_CausalMaskBias)
    ->Args({2048, 1})
    ->Args({2048, bench::all_cores()})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_MaskedSoftmax)
    ->Args({1024, 1})
    ->Args({1024, bench::all_cores()})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_BeamSearchStep)->Apply(bench::thread_args)->Unit(benchmark::kMillisecond)->UseRealTime();
