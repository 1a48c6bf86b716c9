// MoE benchmarks: the layer (sparse vs dense) against the expert-GEMM floor,
// gating and routing scaling with the group size.
#include <Eigen/Core>

#include "bench_common.hpp"

namespace {

using namespace bench;

// The whole layer forward, gating included (reference configuration).
// sparse: MoELayer::forward_into, the steady state of a model; dense: the
// sources' one-hot einsums.
void BM_MoELayer(benchmark::State& state, bool dense) {
  set_threads(state);
  const Reference r;
  Layer<float> L(r.G, r.S, r.M, r.H, r.E, r.C());
  L.opt.dense = dense;
  MoELayer<float> layer(L.w, L.opt);
  MoEResult<float> out;
  index_t rows = 0;
  layer.forward_into(out, L.x);  // warm up: the layer's workspace is allocated once, in the first call
  for (auto _ : state) {
    layer.forward_into(out, L.x);
    benchmark::DoNotOptimize(out.outputs.data());
  }
  for (auto n : out.stats.tokens_per_expert) rows += n;
  const double tokens = double(r.G * r.S);
  state.counters["tokens/s"] = benchmark::Counter(tokens * double(state.iterations()), benchmark::Counter::kIsRate);
  // useful FLOPs: the expert GEMMs over the filled rows
  state.counters["GFLOP/s"] = benchmark::Counter(4.0 * double(rows) * double(r.M * r.H) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
  state.counters["filled_rows"] = double(rows);
}

// The useful work only: x . wi, relu, . wo with Eigen over exactly the rows
// the routing filled (routed once, outside the timing), in preallocated
// contiguous buffers - the best way we know to do the expert work, so the
// layer's ratio to it is what gating, dispatch and combine add.
void BM_ExpertGemmFloor(benchmark::State& state) {
  set_threads(state);
  const Reference r;
  Layer<float> L(r.G, r.S, r.M, r.H, r.E, r.C());
  const auto logits = einsum({L.x, L.w.wg}, Shape{{"batch", r.G}, {"group", r.S}, {"experts", r.E}});
  const auto routing = top2_gating(logits, L.opt.gating);
  std::vector<index_t> offset(static_cast<std::size_t>(r.E + 1), 0);
  for (index_t e = 0; e < r.E; ++e) {
    index_t n = 0;
    for (index_t g = 0; g < r.G; ++g) n += routing.plan.fill[std::size_t(g * r.E + e)];
    offset[std::size_t(e + 1)] = offset[std::size_t(e)] + n;
  }
  const index_t total = offset.back();
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Mat X(total, r.M), Hh(total, r.H), Y(total, r.M);
  // the real routed rows, in the layer's (expert, group, slot) order
  for (index_t e = 0, row = 0; e < r.E; ++e)
    for (index_t g = 0; g < r.G; ++g)
      for (index_t c = 0; c < routing.plan.fill[std::size_t(g * r.E + e)]; ++c, ++row) {
        const index_t entry = routing.plan.slot_entry[std::size_t((g * r.E + e) * r.C() + c)];
        std::copy_n(L.x.data() + (entry / 2) * r.M, r.M, X.data() + row * r.M);
      }
  const bool per_thread = r.E >= 2 * num_threads() && num_threads() > 1;
  auto expert = [&](index_t e) {
    const index_t r0 = offset[std::size_t(e)], n = offset[std::size_t(e + 1)] - r0;
    Eigen::Map<const Mat> wi(L.w.experts.wi.data() + e * r.M * r.H, r.M, r.H);
    Eigen::Map<const Mat> wo(L.w.experts.wo.data() + e * r.H * r.M, r.H, r.M);
    Eigen::Map<Mat> h(Hh.data() + r0 * r.H, n, r.H);
    h.noalias() = Eigen::Map<const Mat>(X.data() + r0 * r.M, n, r.M) * wi;
    for (index_t i = 0; i < n; ++i) {
      float* row = Hh.data() + (r0 + i) * r.H;
      for (index_t j = 0; j < r.H; ++j) row[j] = row[j] > 0.f ? row[j] : 0.f;
    }
    Eigen::Map<Mat>(Y.data() + r0 * r.M, n, r.M).noalias() = h * wo;
  };
  for (auto _ : state) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (per_thread)
    for (index_t e = 0; e < r.E; ++e) expert(e);
#else
    for (index_t e = 0; e < r.E; ++e) expert(e);
#endif
    benchmark::DoNotOptimize(Y.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(r.G * r.S) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(4.0 * double(total) * double(r.M * r.H) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
  state.counters["filled_rows"] = double(total);
}

// Top-2 gating of one group of S tokens (E=16, C from capacity factor 1.25):
// the sparse plan vs the dense [S, E, C] tensors.
void BM_Top2Gating(benchmark::State& state, bool dense) {
  set_threads(state, 1);
  const index_t S = state.range(0), E = 16;
  Top2Options o;
  o.capacity = Dim("expert_capacity", topk_capacity(S, E, 2, 1.25));
  const auto logits = Rng(1).normal<float>(Shape{{"batch", 1}, {"group", S}, {"experts", E}});
  for (auto _ : state) {
    if (dense) {
      auto d = top2_gating_dense(logits, o);
      benchmark::DoNotOptimize(d.combine.data());
    } else {
      auto g = top2_gating(logits, o);
      benchmark::DoNotOptimize(g.plan.weight.data());
    }
  }
  state.counters["tokens/s"] = benchmark::Counter(double(S) * double(state.iterations()), benchmark::Counter::kIsRate);
}

// Routing alone - gating, dispatch and combine, with identity experts - for a
// fixed 8192 tokens split into groups of S (G = 8192 / S), M = 512, E = 16,
// C from capacity factor 1.25. Time per token should stay flat in S on the
// sparse path and grow linearly on the dense path (C grows with S).
void BM_RoutingScaling(benchmark::State& state, bool dense) {
  set_threads(state, 1);
  const index_t S = state.range(0), N = 8192, G = N / S, M = 512, E = 16;
  Top2Options o;
  o.capacity = Dim("expert_capacity", topk_capacity(S, E, 2, 1.25));
  Rng rng(3);
  const auto x = rng.normal<float>(Shape{{"batch", G}, {"group", S}, {"model", M}});
  const auto wg = rng.normal<float>(Shape{{"model", M}, {"experts", E}});
  const Shape logits_shape{{"batch", G}, {"group", S}, {"experts", E}};
  const Shape egcm{{"experts", E}, {"batch", G}, o.capacity, {"model", M}};
  std::vector<float> buf;
  Tensor<float> out(x.shape());
  for (auto _ : state) {
    const auto logits = einsum({x, wg}, logits_shape);
    if (dense) {
      const auto d = top2_gating_dense(logits, o);
      const auto expert_inputs = einsum({d.dispatch, x}, egcm);
      out = einsum({d.combine, expert_inputs}, x.shape());
    } else {
      const auto r = top2_gating(logits, o);
      // dispatch: gather the routed rows (per expert, (group, slot) order)
      const auto& p = r.plan;
      index_t rows = 0;
      for (auto f : p.fill) rows += f;
      if (buf.size() < std::size_t(rows * M)) buf.resize(std::size_t(rows * M));
      std::vector<index_t> entry_row(p.expert.size(), -1);
      index_t at = 0;
      for (index_t e = 0; e < E; ++e)
        for (index_t g = 0; g < G; ++g)
          for (index_t c = 0; c < p.fill[std::size_t(g * E + e)]; ++c) {
            const index_t entry = p.slot_entry[std::size_t((g * E + e) * o.capacity.size + c)];
            std::copy_n(x.data() + (entry / 2) * M, M, buf.data() + at * M);
            entry_row[std::size_t(entry)] = at++;
          }
      // combine: weighted scatter-add (identity experts)
      for (index_t t = 0; t < N; ++t) {
        float* dst = out.data() + t * M;
        std::fill(dst, dst + M, 0.f);
        for (index_t j = 0; j < 2; ++j) {
          const index_t row = entry_row[std::size_t(t * 2 + j)];
          if (row < 0) continue;
          const float w = p.weight[std::size_t(t * 2 + j)];
          for (index_t m = 0; m < M; ++m) dst[m] += w * buf[std::size_t(row * M + m)];
        }
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(N) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["ns/token"] = benchmark::Counter(double(N) * double(state.iterations()),
                                                  benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// The whole layer for a fixed 8192 tokens in groups of S, both paths.
void BM_MoELayerScaling(benchmark::State& state, bool dense) {
  set_threads(state, 1);
  const index_t S = state.range(0), N = 8192;
  Layer<float> L(N / S, S, 512, 2048, 16, topk_capacity(S, 16, 2, 1.25));
  L.opt.dense = dense;
  MoELayer<float> layer(L.w, L.opt);
  MoEResult<float> out;
  layer.forward_into(out, L.x);  // warm up
  for (auto _ : state) {
    layer.forward_into(out, L.x);
    benchmark::DoNotOptimize(out.outputs.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(N) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void thread_args(benchmark::internal::Benchmark* b) {
  b->Arg(1);
  if (all_cores() > 1) b->Arg(all_cores());
}
void scaling_args(benchmark::internal::Benchmark* b) {
  for (int t : {1, all_cores()}) {
    for (index_t s = 256; s <= 8192; s *= 2) b->Args({s, t});
    if (all_cores() == 1) break;
  }
}

}  // namespace

BENCHMARK_CAPTURE(BM_MoELayer, sparse, false)->Apply(thread_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_MoELayer, dense, true)->Apply(thread_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ExpertGemmFloor)->Apply(thread_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Top2Gating, sparse, false)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Top2Gating, dense, true)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RoutingScaling, sparse, false)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RoutingScaling, dense, true)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_MoELayerScaling, sparse, false)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_MoELayerScaling, dense, true)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
