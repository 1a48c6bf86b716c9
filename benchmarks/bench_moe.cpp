// MoE benchmarks: the layer in each expert precision, its expert stage
// alone, decoding with cold weights, the dense oracle, and gating and
// routing scaling with the group size.
#include <memory>

#include "bench_common.hpp"
#include "portable_layer.hpp"

namespace {

using namespace bench;

const char* const kPrecision[] = {"fp32", "bf16", "int8"};

/// One layer per precision and input set, built once for the whole run.
struct ReferenceLayers {
  Reference r;
  Layer<float> L{r.G, r.S, r.M, r.H, r.E, r.C()};
  std::unique_ptr<MoELayer<float>> layer[3];
  static ReferenceLayers& get() {
    static ReferenceLayers s;
    return s;
  }
  const MoELayer<float>& at(int precision) {
    if (!layer[precision]) {
      MoEOptions o = L.opt;
      o.precision = static_cast<Precision>(precision);
      layer[precision] = std::make_unique<MoELayer<float>>(L.w, o);
    }
    return *layer[precision];
  }
};

index_t routed_rows(const RoutingStats& s) {
  index_t rows = 0;
  for (auto n : s.tokens_per_expert) rows += n;
  return rows;
}

// The whole layer forward (router, gating, dispatch, experts, combine) on the
// reference configuration: MoELayer::forward_into, the steady state of a model.
void BM_MoELayer(benchmark::State& state) {
  const int precision = static_cast<int>(state.range(0));
  set_threads(state, 1);
  auto& R = ReferenceLayers::get();
  const auto& layer = R.at(precision);
  MoEResult<float> out;
  layer.forward_into(out, R.L.x);  // warm up: workspace, primitives
  for (auto _ : state) {
    layer.forward_into(out, R.L.x);
    benchmark::DoNotOptimize(out.outputs.data());
  }
  const index_t rows = routed_rows(out.stats);
  const double tokens = double(R.r.G * R.r.S);
  state.counters["tokens/s"] = benchmark::Counter(tokens * double(state.iterations()), benchmark::Counter::kIsRate);
  // useful FLOPs: the expert GEMMs over the filled rows
  state.counters["GFLOP/s"] = benchmark::Counter(
      4.0 * double(rows) * double(R.r.M * R.r.H) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["filled_rows"] = double(rows);
  state.SetLabel(kPrecision[precision]);
}

// The same layer compiled as a plain `cmake -DCMAKE_BUILD_TYPE=Release`
// build would compile it (no -march flags; portable_layer.hpp). oneDNN picks
// its kernels at run time, so this should match BM_MoELayer. Reports the
// largest difference from the native build's outputs (relative to max |y|).
void BM_MoELayerPortable(benchmark::State& state) {
  const int precision = static_cast<int>(state.range(0));
  set_threads(state, 1);
  auto& R = ReferenceLayers::get();
  bench_portable::prepare(precision);
  long rows = bench_portable::forward(precision);  // warm up
  for (auto _ : state) rows = bench_portable::forward(precision);
  const auto native = R.at(precision).forward(R.L.x);
  state.counters["max_rel_diff"] =
      bench_portable::max_rel_difference(precision, native.outputs.data(), static_cast<long>(native.outputs.size()));
  state.counters["GFLOP/s"] = benchmark::Counter(
      4.0 * double(rows) * double(R.r.M * R.r.H) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(kPrecision[precision]) + ", compiled for " + bench_portable::compiled_isa());
}

// The expert stage alone (gather each block's rows, the FFN kernels, the
// combine) over the rows the routing filled, routed once outside the
// timing: the layer's ratio to it is what the router and gating add.
void BM_ExpertStage(benchmark::State& state) {
  const int precision = static_cast<int>(state.range(0));
  set_threads(state, 1);
  auto& R = ReferenceLayers::get();
  const auto& layer = R.at(precision);
  const auto logits = layer.router_logits(R.L.x);
  const auto routing = top2_gating(logits, std::get<Top2Options>(R.L.opt.router));
  ExpertWorkspace<float> ws;
  Tensor<float> y;
  const auto& pe = layer.experts();
  auto stage = [&] { experts_sparse_into(y, R.L.x, routing.plan, pe, ws); };
  stage();
  for (auto _ : state) {
    stage();
    benchmark::DoNotOptimize(y.data());
  }
  index_t rows = 0;
  for (index_t n : routing.stats.tokens_per_expert) rows += n;
  state.counters["GFLOP/s"] = benchmark::Counter(
      4.0 * double(rows) * double(R.r.M * R.r.H) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(kPrecision[precision]);
}

// A training step of the reference layer: forward_train and backward
// (L = <outputs, dy> + 0.01 aux_loss), arguments precision (0 fp32, 1 bf16),
// threads, recompute_hidden. Compare with BM_MoELayer/<precision>/<threads>
// (the inference forward): the FLOPs are 3x. "GFLOP/s" counts the useful
// FLOPs of forward and backward (12 per routed row, model and hidden unit).
void BM_MoEBackward(benchmark::State& state) {
  set_threads(state, 1);
  auto& R = ReferenceLayers::get();
  MoEOptions o = R.L.opt;
  o.precision = static_cast<Precision>(state.range(0));
  o.trainable = true;
  o.recompute_hidden = state.range(2) != 0;
  const MoELayer<float> layer(R.L.w, o);
  const Tensor<float> dy = Rng(5).normal<float>(R.L.x.shape());
  MoETape<float> tape;
  MoEResult<float> out;
  MoEGradients<float> g;
  auto step = [&] {
    layer.forward_train_into(out, R.L.x, tape);
    layer.backward_into(g, tape, dy, {0.01, 0.0});
  };
  step();
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(g.experts.wi.data());
  }
  const index_t rows = routed_rows(out.stats);
  state.counters["GFLOP/s"] = benchmark::Counter(
      12.0 * double(rows) * double(R.r.M * R.r.H) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["tape_bytes_per_token"] = double(tape.bytes()) / double(R.r.G * R.r.S);
  state.SetLabel(std::string(kPrecision[state.range(0)]) + (o.recompute_hidden ? ", recompute" : ", keep"));
}

// The dense oracle (the sources' one-hot einsums), for comparison.
void BM_MoELayerDense(benchmark::State& state) {
  set_threads(state);
  auto& R = ReferenceLayers::get();
  MoEOptions o = R.L.opt;
  o.dense = true;
  const MoELayer<float> layer(R.L.w, o);
  MoEResult<float> out;
  layer.forward_into(out, R.L.x);
  for (auto _ : state) {
    layer.forward_into(out, R.L.x);
    benchmark::DoNotOptimize(out.outputs.data());
  }
}

// How far bf16 and int8 outputs are from fp32: max |delta| / max |y| on the
// reference configuration (a measurement, not a timing).
void BM_PrecisionError(benchmark::State& state) {
  const int precision = static_cast<int>(state.range(0));
  auto& R = ReferenceLayers::get();
  const auto ref = R.at(0).forward(R.L.x);
  MoEResult<float> out;
  for (auto _ : state) R.at(precision).forward_into(out, R.L.x);
  float err = 0, ymax = 0;
  for (index_t i = 0; i < ref.outputs.size(); ++i) {
    err = std::max(err, std::fabs(out.outputs[i] - ref.outputs[i]));
    ymax = std::max(ymax, std::fabs(ref.outputs[i]));
  }
  state.counters["rel_error"] = double(err / ymax);
  state.counters["same_routing"] = out.stats.tokens_per_expert == ref.stats.tokens_per_expert ? 1.0 : 0.0;
  state.SetLabel(kPrecision[precision]);
}

// Decoding: a few tokens through a layer whose weights are cold, as in a
// model that cycles through its layers. The layers are copies of the
// reference layer, as many as it takes to hold 4x more weight bytes than the
// last-level cache (at least 256 MiB), visited in turn. Reports the weight
// bytes each step reads (router + the experts it routes to).
struct DecodeLayers {
  std::vector<std::unique_ptr<MoELayer<float>>> layers;
  static DecodeLayers& get(int precision) {
    static DecodeLayers d[3];
    auto& s = d[precision];
    if (s.layers.empty()) {
      auto& R = ReferenceLayers::get();
      MoEOptions o = R.L.opt;
      o.precision = static_cast<Precision>(precision);
      std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(64);
      const std::size_t per = MoELayer<float>(R.L.w, o).weight_bytes();
      const std::size_t want = std::max<std::size_t>(std::size_t{256} << 20, 4 * llc_bytes());
      const std::size_t n = std::max<std::size_t>(2, (want + per - 1) / per);
      for (std::size_t i = 0; i < n; ++i) s.layers.push_back(std::make_unique<MoELayer<float>>(R.L.w, o));
    }
    return s;
  }
};

void BM_MoEDecode(benchmark::State& state) {
  const int precision = static_cast<int>(state.range(0));
  const index_t tokens = state.range(1);
  set_threads(state, 2);
  auto& D = DecodeLayers::get(precision);
  auto& R = ReferenceLayers::get();
  const Tensor<float> x = slice(slice(R.L.x, "batch", 0, 1), "group", 0, tokens);
  MoEResult<float> out;
  for (auto& l : D.layers) l->forward_into(out, x);  // warm up the primitives
  std::size_t next = 0;
  double bytes = 0;
  for (auto _ : state) {
    const auto& layer = *D.layers[next++ % D.layers.size()];
    layer.forward_into(out, x);
    benchmark::DoNotOptimize(out.outputs.data());
    const auto& k = layer.experts().kernel();
    double step = static_cast<double>(layer.weight_bytes() - k.bytes());  // the router
    for (auto n : out.stats.tokens_per_expert)
      if (n > 0) step += static_cast<double>(k.up.matrix_bytes() + k.gate.matrix_bytes() + k.down.matrix_bytes());
    bytes += step;
  }
  state.counters["weight_bytes"] = bytes / double(state.iterations());
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsRate);
  state.counters["layers"] = double(D.layers.size());
  state.SetLabel(kPrecision[precision]);
}

// Top-2 gating of one group of S tokens (E=16, C from capacity factor 1.25):
// the sparse plan vs the dense [S, E, C] tensors.
void BM_Top2Gating(benchmark::State& state, bool dense) {
  set_threads(state, 1);
  const index_t S = state.range(0), E = 16;
  Top2Options o;
  o.capacity = CapacitySpec::fixed(topk_capacity(S, E, 2, 1.25));
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
  o.capacity = CapacitySpec::fixed(topk_capacity(S, E, 2, 1.25));
  Rng rng(3);
  const auto x = rng.normal<float>(Shape{{"batch", G}, {"group", S}, {"model", M}});
  const auto wg = rng.normal<float>(Shape{{"model", M}, {"experts", E}});
  const Shape logits_shape{{"batch", G}, {"group", S}, {"experts", E}};
  const Shape egcm{{"experts", E}, {"batch", G}, {"expert_capacity", o.capacity.size}, {"model", M}};
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
      for (auto f : p.taken) rows += f;
      if (buf.size() < std::size_t(rows * M)) buf.resize(std::size_t(rows * M));
      std::vector<index_t> entry_row(p.expert.size(), -1);
      index_t at = 0;
      for (index_t e = 0; e < E; ++e)
        for (index_t g = 0; g < G; ++g)
          for (index_t c = 0; c < p.taken[std::size_t(g * E + e)]; ++c) {
            const index_t entry = p.slot_entry[std::size_t(p.slot_index(g, e, c))];
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

// The whole layer for a fixed 8192 tokens in groups of S (sparse, fp32).
void BM_MoELayerScaling(benchmark::State& state) {
  set_threads(state, 1);
  const index_t S = state.range(0), N = 8192;
  Layer<float> L(N / S, S, 512, 2048, 16, topk_capacity(S, 16, 2, 1.25));
  MoELayer<float> layer(L.w, L.opt);
  MoEResult<float> out;
  layer.forward_into(out, L.x);  // warm up
  for (auto _ : state) {
    layer.forward_into(out, L.x);
    benchmark::DoNotOptimize(out.outputs.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(N) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void precision_args(benchmark::internal::Benchmark* b) {
  for (int p = 0; p < 3; ++p) {
    b->Args({p, 1});
    if (all_cores() > 1) b->Args({p, all_cores()});
  }
}
void decode_args(benchmark::internal::Benchmark* b) {
  for (int p = 0; p < 3; ++p)
    for (index_t tokens : {1, 8}) {
      b->Args({p, tokens, 1});
      if (all_cores() > 1) b->Args({p, tokens, all_cores()});
    }
}
void backward_args(benchmark::internal::Benchmark* b) {
  for (int p = 0; p < 2; ++p)
    for (int recompute : {0, 1}) {
      if (p == 1 && recompute) continue;
      b->Args({p, 1, recompute});
      if (all_cores() > 1) b->Args({p, all_cores(), recompute});
    }
}
void scaling_args(benchmark::internal::Benchmark* b) {
  for (int t : {1, all_cores()}) {
    for (index_t s = 256; s <= 8192; s *= 2) b->Args({s, t});
    if (all_cores() == 1) break;
  }
}

}  // namespace

BENCHMARK(BM_MoELayer)->Apply(precision_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MoELayerPortable)->Apply(precision_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ExpertStage)->Apply(precision_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_PrecisionError)->Arg(1)->Arg(2)->Iterations(1);
BENCHMARK(BM_MoEDecode)->Apply(decode_args)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_MoEBackward)->Apply(backward_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MoELayerDense)->Apply(thread_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Top2Gating, sparse, false)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Top2Gating, dense, true)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RoutingScaling, sparse, false)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RoutingScaling, dense, true)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MoELayerScaling)->Apply(scaling_args)->Unit(benchmark::kMillisecond)->UseRealTime();
