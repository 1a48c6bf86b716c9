// Named einsum against hand-written Eigen on the same shapes: the einsum
// layer must add (almost) nothing to the GEMM. Compare BM_EinsumGemm with
// BM_EigenGemm (items_per_second = FLOP/s); target ratio >= 0.85.
#include <benchmark/benchmark.h>

#include <random>

#include "bench_common.hpp"

namespace {

using namespace einmoe;

template <class T>
Tensor<T> random_tensor(const Shape& s, unsigned seed) {
  Tensor<T> t(s, uninitialized);
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& v : t) v = static_cast<T>(u(g));
  return t;
}

using bench::set_threads;

constexpr index_t kM = 4096, kK = 512, kN = 2048;

void BM_EinsumGemm(benchmark::State& state) {
  set_threads(state);
  const auto a = random_tensor<float>(Shape{{"tokens", kM}, {"model", kK}}, 1);
  const auto b = random_tensor<float>(Shape{{"model", kK}, {"hidden", kN}}, 2);
  const Shape out{{"tokens", kM}, {"hidden", kN}};
  for (auto _ : state) {
    auto c = einsum({a, b}, out);
    benchmark::DoNotOptimize(c.data());
  }
  state.SetItemsProcessed(state.iterations() * 2 * kM * kK * kN);
  state.counters["threads"] = static_cast<double>(num_threads());
}

void BM_EigenGemm(benchmark::State& state) {
  set_threads(state);
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M a = M::Random(kM, kK), b = M::Random(kK, kN);
  for (auto _ : state) {
    M c(kM, kN);  // einsum allocates its result too
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  }
  state.SetItemsProcessed(state.iterations() * 2 * kM * kK * kN);
  state.counters["threads"] = static_cast<double>(num_threads());
}

// The expert contraction of an MoE layer: egcm,emh->egch
// (E=16 experts, G=4 groups, C=160 slots, M=512, H=2048).
void BM_EinsumExpertContraction(benchmark::State& state) {
  set_threads(state);
  const index_t E = 16, G = 4, C = 160, M = 512, H = 2048;
  const auto x = random_tensor<float>(Shape{{"experts", E}, {"group", G}, {"capacity", C}, {"model", M}}, 3);
  const auto w = random_tensor<float>(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 4);
  const Shape out{{"experts", E}, {"group", G}, {"capacity", C}, {"hidden", H}};
  for (auto _ : state) {
    auto y = einsum({x, w}, out);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * 2 * E * G * C * M * H);
}

}  // namespace

BENCHMARK(BM_EinsumGemm)->Apply(bench::thread_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_EigenGemm)->Apply(bench::thread_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_EinsumExpertContraction)->Apply(bench::thread_args)->Unit(benchmark::kMillisecond)->UseRealTime();
