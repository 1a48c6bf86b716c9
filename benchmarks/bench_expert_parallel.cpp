// Expert parallelism, measured (run under mpirun; rank 0 reports):
//
//   mpirun -np 2 build/release/benchmarks/einmoe_bench_expert_parallel
//
// BM_EPLayer/{rows,top2cap}/{alltoallv,padded,hierarchical}: the reference
// layer (4 groups x 1024 tokens, M=512, H=2048, E=16, top-2, 1 thread per
// rank) with its groups split over the ranks. rows = dropless top-k;
// top2cap = GShard's top-2 gating with capacity C=160. The exchange:
// alltoallv sends the routed rows only, padded sends equal capacity blocks
// (MPI_Alltoall, GShard / DeepSpeed), hierarchical goes through the node
// first (Tutel's 2DH; on one machine all ranks are one node, so this
// measures its extra copies, not its savings). Counters (max over ranks):
// the time split, MB sent per rank, and skew_ms = the spread of the ranks'
// routing + expert time (what the exchange waits for, not moves). BM_BareAlltoallv: MPI_Alltoallv alone on the same
// bytes the layer's exchange moved (there and back), the baseline of
// "exchange / bare Alltoallv". Fixed iteration counts, so every rank runs the
// same collectives.
#include <mpi.h>

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>

#include <einmoe/parallel/expert_parallel.hpp>

#include "bench_common.hpp"

using namespace einmoe;

namespace {

int rank_ = 0, ranks_ = 1;

const char* name(Exchange e) { return e == Exchange::rows ? "alltoallv" : to_string(e); }
std::map<std::string, double> exchange_ms;       // per variant, last run
std::map<std::string, std::vector<int>> counts;  // per variant: rows to each rank (baseline)

double max_over_ranks(double v) {
  double m = 0;
  MPI_Allreduce(&v, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

struct Setup {
  MoEWeights<float> w;
  Tensor<float> x;  // this rank's groups
  Setup() {
    // the suite's reference layer and inputs (bench_common.hpp), same seed
    const bench::Reference R;
    bench::Layer<float> L(R.G, R.S, R.M, R.H, R.E, R.C());
    w = std::move(L.w);
    const index_t g0 = R.G * rank_ / ranks_, g1 = R.G * (rank_ + 1) / ranks_;
    x = slice(L.x, "batch", g0, g1 - g0);
  }
  static Setup& get() {
    static Setup s;
    return s;
  }
};

void BM_EPLayer(benchmark::State& state, bool top2cap, Exchange how) {
  auto& s = Setup::get();
  MoEOptions o;
  if (top2cap) {
    Top2Options g;
    g.capacity = CapacitySpec::fixed(160);
    o.router = g;
  } else {
    TopKOptions t;
    t.k = 2;
    t.normalize = TopKNormalize::topk;
    o.router = t;
  }
  const ExpertParallelMoE<float> layer(MPI_COMM_WORLD, s.w, o, ExpertParallelOptions{how, 0});
  MoEResult<float> out;
  layer.forward_into(out, s.x);
  ExpertParallelStats sum;
  double skew = 0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    layer.forward_into(out, s.x);
    state.SetIterationTime(max_over_ranks(MPI_Wtime() - t0));
    const auto& l = layer.last();
    sum.route_ms += l.route_ms, sum.exchange_ms += l.exchange_ms, sum.experts_ms += l.experts_ms,
        sum.combine_ms += l.combine_ms;
    const double busy = l.route_ms + l.experts_ms;
    skew += max_over_ranks(busy) + max_over_ranks(-busy);
  }
  const double n = double(state.iterations());
  state.counters["route_ms"] = max_over_ranks(sum.route_ms / n);
  state.counters["exchange_ms"] = max_over_ranks(sum.exchange_ms / n);
  state.counters["experts_ms"] = max_over_ranks(sum.experts_ms / n);
  state.counters["combine_ms"] = max_over_ranks(sum.combine_ms / n);
  state.counters["MB_sent"] = max_over_ranks(double(layer.last().bytes_sent) / 1e6);
  state.counters["skew_ms"] = skew / n;
  state.counters["ranks"] = ranks_;
  const std::string v = std::string(top2cap ? "top2cap" : "rows") + "/" + name(how);
  exchange_ms[v] = state.counters["exchange_ms"];
  // rows this rank sent to each rank in the last pass (for the baseline)
  // (the baseline sends as many rows, split evenly over the ranks)
  counts[v].assign(static_cast<std::size_t>(ranks_), static_cast<int>(layer.last().rows_sent / ranks_));
}

void BM_BareAlltoallv(benchmark::State& state, const std::string& variant) {
  const index_t M = 512;
  auto it = counts.find(variant);
  std::vector<int> sc = it == counts.end() ? std::vector<int>(static_cast<std::size_t>(ranks_), 1024) : it->second;
  std::vector<int> rc(sc.size()), sd(sc.size()), rd(sc.size());
  MPI_Alltoall(sc.data(), 1, MPI_INT, rc.data(), 1, MPI_INT, MPI_COMM_WORLD);
  for (std::size_t q = 1; q < sc.size(); ++q) sd[q] = sd[q - 1] + sc[q - 1], rd[q] = rd[q - 1] + rc[q - 1];
  MPI_Datatype row;
  MPI_Type_contiguous(static_cast<int>(M), MPI_FLOAT, &row);
  MPI_Type_commit(&row);
  std::vector<float> send(static_cast<std::size_t>((sd.back() + sc.back()) * M), 1.f),
      recv(static_cast<std::size_t>((rd.back() + rc.back()) * M));
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    // there and back, as the layer's exchange
    MPI_Alltoallv(send.data(), sc.data(), sd.data(), row, recv.data(), rc.data(), rd.data(), row, MPI_COMM_WORLD);
    MPI_Alltoallv(recv.data(), rc.data(), rd.data(), row, send.data(), sc.data(), sd.data(), row, MPI_COMM_WORLD);
    state.SetIterationTime(max_over_ranks(MPI_Wtime() - t0));
  }
  MPI_Type_free(&row);
  const double bytes = 2.0 * double(send.size()) * sizeof(float);
  state.counters["GB/s"] = benchmark::Counter(bytes * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["MB_sent"] = double(send.size()) * sizeof(float) / 1e6;
}

class Quiet : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

class Ratios : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      seconds[r.benchmark_name()] = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
    }
    ConsoleReporter::ReportRuns(runs);
  }
  std::map<std::string, double> seconds;
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks_);
  set_num_threads(1);
  benchmark::Initialize(&argc, argv);
  const Exchange kinds[] = {Exchange::rows, Exchange::padded, Exchange::hierarchical};
  for (bool top2cap : {false, true}) {
    const char* v = top2cap ? "top2cap" : "rows";
    for (Exchange how : kinds)
      benchmark::RegisterBenchmark((std::string("BM_EPLayer/") + v + "/" + name(how)).c_str(), BM_EPLayer, top2cap, how)
          ->Iterations(10)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((std::string("BM_BareAlltoallv/") + v).c_str(), BM_BareAlltoallv,
                                 std::string(v) + "/alltoallv")
        ->Iterations(20)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
  Ratios ratios;
  Quiet quiet;
  if (rank_ == 0) benchmark::RunSpecifiedBenchmarks(&ratios);
  else benchmark::RunSpecifiedBenchmarks(&quiet);
  if (rank_ == 0) {
    std::printf("\nRatios (%d ranks, measured in this run):\n", ranks_);
    for (const char* v : {"rows", "top2cap"}) {
      const std::string b = std::string("BM_BareAlltoallv/") + v + "/iterations:20/manual_time";
      const auto it = ratios.seconds.find(b);
      const std::string base = std::string(v) + "/alltoallv";
      if (it != ratios.seconds.end() && it->second > 0)
        std::printf("  %-8s layer exchange (alltoallv) / bare MPI_Alltoallv of the same bytes   %8.3f\n", v,
                    exchange_ms[base] / 1e3 / it->second);
      for (Exchange how : {Exchange::padded, Exchange::hierarchical}) {
        const std::string k = std::string(v) + "/" + name(how);
        if (exchange_ms.count(k) && exchange_ms[base] > 0)
          std::printf("  %-8s exchange %-12s / exchange alltoallv                          %8.3f\n", v, name(how),
                      exchange_ms[k] / exchange_ms[base]);
      }
    }
  }
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
