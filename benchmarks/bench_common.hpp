// benchmarks/bench_common.hpp - shared inputs and helpers for the suite.
#pragma once

#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include <einmoe/einmoe.hpp>

namespace bench {

using namespace einmoe;

/// Every benchmark takes its thread count (1 or all cores) as its last
/// argument, at position `index`.
inline void set_threads(const benchmark::State& s, int index = 0) { set_num_threads(static_cast<int>(s.range(index))); }
inline int all_cores() {
#if defined(_OPENMP)
  return omp_get_num_procs();
#else
  return 1;
#endif
}
/// Bytes of the last-level cache (0 when unknown).
inline std::size_t llc_bytes() {
#if defined(_SC_LEVEL3_CACHE_SIZE)
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return static_cast<std::size_t>(l3);
#endif
#if defined(_SC_LEVEL2_CACHE_SIZE)
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 > 0) return static_cast<std::size_t>(l2);
#endif
  return 0;
}

/// Runs a benchmark at 1 thread and at all cores (its last argument).
inline void thread_args(benchmark::internal::Benchmark* b) {
  b->Arg(1);
  if (all_cores() > 1) b->Arg(all_cores());
}

/// The reference configuration of the issue: G=4 groups x S=1024 tokens,
/// M=512, H=2048, E=16, top-2, capacity factor 1.25 (C=160), relu, float32.
struct Reference {
  index_t G = 4, S = 1024, M = 512, H = 2048, E = 16;
  double cf = 1.25;
  index_t C() const { return topk_capacity(S, E, 2, cf); }
};

/// Random weights and inputs with a fixed seed.
template <class T>
struct Layer {
  Tensor<T> wg, wi, wo, x;
  MoEWeights<T> w;  // views of wg, wi, wo
  MoEOptions opt;
  Layer(index_t G, index_t S, index_t M, index_t H, index_t E, index_t C, std::uint64_t seed = 2024) {
    Rng rng(seed);
    auto init = [&](const Shape& s, double scale) {
      Tensor<T> t = rng.normal<T>(s);
      for (auto& v : t) v = static_cast<T>(static_cast<double>(v) * scale);
      return t;
    };
    wg = init(Shape{{"model", M}, {"experts", E}}, 1.0 / std::sqrt(double(M)));
    wi = init(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 1.0 / std::sqrt(double(M)));
    wo = init(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, 1.0 / std::sqrt(double(H)));
    x = init(Shape{{"batch", G}, {"group", S}, {"model", M}}, 1.0);
    w.wg = wg;
    w.experts.wi = wi;
    w.experts.wo = wo;
    Top2Options gating;
    gating.capacity = CapacitySpec::fixed(C);
    opt.router = gating;
  }
};

}  // namespace bench
