// The suite's main: runs the benchmarks, then prints the targets, each a
// ratio against a baseline measured in the same run (see README,
// Performance). With --benchmark_format=json the JSON goes to stdout and the
// ratios to stderr.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

template <class Base>
class RatioReporter : public Base {
 public:
  explicit RatioReporter(std::FILE* out) : out_(out) {}
  // With --benchmark_repetitions, the median of the repetitions stands for a
  // benchmark (this machine is shared and noisy); otherwise its one run.
  void ReportRuns(const std::vector<benchmark::BenchmarkReporter::Run>& runs) override {
    using R = benchmark::BenchmarkReporter::Run;
    for (const auto& r : runs) {
      if (r.error_occurred) continue;
      const bool median = r.run_type == R::RT_Aggregate && r.aggregate_name == "median";
      if (!median && r.run_type != R::RT_Iteration) continue;
      std::string name = r.run_name.str();
      const std::string suffix = "/real_time";
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
        name.resize(name.size() - suffix.size());
      if (!median && from_median_.count(name)) continue;
      if (median) from_median_.insert(name);
      seconds_[name] = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      // (reporters see counters already finished: rates divided by the
      // run's time, averages by its iterations)
      for (const auto& c : r.counters) counters_[name][c.first] = c.second.value;
    }
    Base::ReportRuns(runs);
  }

  void Finalize() override {
    Base::Finalize();
    std::fprintf(out_, "\nTargets (ratios measured in this run):\n");
    static const char* const names[] = {"fp32", "bf16", "int8"};  // BM_MoELayer/{0,1,2}
    const std::string all = max_threads();
    std::vector<std::string> counts{"1"};
    if (all != "1") counts.push_back(all);
    for (const std::string& t : counts) {
      std::fprintf(out_, "-- %s thread(s)\n", t.c_str());
      ratio(counter("BM_MoELayer/0/" + t, "GFLOP/s"), counter("BM_PeakFMA/" + t, "GFLOP/s"),
            "fp32 layer useful GFLOP/s / peak FMA", ">=", 0.85, t == "1");
      ratio(time("BM_MoELayer/0/" + t), time("BM_MoELayer/1/" + t), "bf16 layer speed-up over fp32", ">=", 1.8, true);
      ratio(time("BM_MoELayer/0/" + t), time("BM_MoELayer/2/" + t), "int8 layer speed-up over fp32", ">=", 2.5, true);
      for (int p = 0; p < 3; ++p) {
        const std::string n = "BM_MoELayer/" + std::to_string(p) + "/" + t;
        ratio(time("BM_MoELayerPortable/" + std::to_string(p) + "/" + t), time(n),
              (std::string(names[p]) + " layer, plain Release build (no -march) / release preset").c_str(), "<=", 1.05,
              p == 0);
      }
      for (int p = 0; p < 3; ++p) {
        const std::string n = "BM_MoELayer/" + std::to_string(p) + "/" + t;
        ratio(time(n), time("BM_ExpertStage/" + std::to_string(p) + "/" + t),
              (std::string(names[p]) + " layer time / its expert stage").c_str(), "", 0, false);
      }
      for (int p = 0; p < 3; ++p)
        for (const char* tokens : {"8", "1"}) {
          const std::string n = "BM_MoEDecode/" + std::to_string(p) + "/" + tokens + "/" + t;
          const double bw = counter("BM_StreamRead/" + t, "GB/s") * 1e9;
          const double ideal = bw > 0 ? counter(n, "weight_bytes") / bw : NAN;
          ratio(
              time(n), ideal,
              (std::string("decode ") + tokens + " tokens " + names[p] + ": time / (weight bytes / bandwidth)").c_str(),
              "<=", 1.25, std::string(tokens) == "8");
        }
      ratio(time("BM_EigenGemm/" + t), time("BM_EinsumGemm/" + t), "einsum GEMM throughput / Eigen GEMM", ">=", 0.85,
            true);
      ratio(time("BM_RoutingScaling/sparse/8192/" + t), time("BM_RoutingScaling/sparse/256/" + t),
            "routing per token, sparse, S=8192 / S=256", "<=", 1.5, true);
      ratio(time("BM_MoELayerDense/" + t), time("BM_MoELayer/0/" + t), "dense oracle time / fp32 layer", "", 0, false);
      ratio(time("BM_MoEBackward/0/" + t + "/0"), time("BM_MoELayer/0/" + t),
            "fp32 forward+backward time / forward time", "<=", 3.3, true);
      ratio(counter("BM_MoEBackward/0/" + t + "/0", "GFLOP/s"), counter("BM_PeakFMA/" + t, "GFLOP/s"),
            "fp32 forward+backward useful GFLOP/s / peak FMA", ">=", 0.8, t == "1");
      ratio(time("BM_MoEBackward/0/" + t + "/0"), time("BM_MoEBackward/1/" + t + "/0"),
            "bf16 forward+backward speed-up over fp32", ">=", 1.6, true);
      ratio(time("BM_MoEBackward/0/" + t + "/1"), time("BM_MoEBackward/0/" + t + "/0"),
            "recompute_hidden time / keeping the pre-activations", "", 0, false);
      ratio(counter("BM_MoEBackward/0/" + t + "/1", "tape_bytes_per_token"),
            counter("BM_MoEBackward/0/" + t + "/0", "tape_bytes_per_token"), "recompute_hidden tape bytes / keeping",
            "", 0, false);
    }
    if (!all.empty() && all != "1") {
      std::fprintf(out_, "-- scaling\n");
      ratio(time("BM_MoELayer/0/1"), time("BM_MoELayer/0/" + all),
            ("fp32 layer " + all + " threads / 1 thread speed-up").c_str(), ">=", 1.8, true);
      ratio(time("BM_MoEBackward/0/1/0"), time("BM_MoEBackward/0/" + all + "/0"),
            ("fp32 forward+backward " + all + " threads / 1 thread speed-up").c_str(), ">=", 1.8, true);
    }
    std::fprintf(out_, "-- accuracy (reference layer, vs fp32)\n");
    ratio(counter("BM_PrecisionError/1/iterations:1", "rel_error"), 1.0, "bf16 max |delta| / max |y|", "<=", 1e-2,
          true);
    ratio(counter("BM_PrecisionError/2/iterations:1", "rel_error"), 1.0, "int8 max |delta| / max |y|", "<=", 3e-2,
          true);
    ratio(counter("BM_PrecisionError/1/iterations:1", "same_routing") *
              counter("BM_PrecisionError/2/iterations:1", "same_routing"),
          1.0, "routing identical across precisions (1 = yes)", ">=", 1.0, true);
    std::fprintf(out_, "%s\n", missed_ ? "Some targets were NOT met." : (checked_ ? "All targets met." : ""));
  }

 private:
  std::string max_threads() const {
    int best = 1;
    for (const auto& kv : seconds_)
      if (kv.first.rfind("BM_PeakFMA/", 0) == 0) best = std::max(best, std::atoi(kv.first.c_str() + 11));
    return std::to_string(best);
  }
  double time(const std::string& name) const {
    const auto it = seconds_.find(name);
    return it == seconds_.end() ? NAN : it->second;
  }
  double counter(const std::string& name, const std::string& c) const {
    const auto it = counters_.find(name);
    if (it == counters_.end()) return NAN;
    const auto jt = it->second.find(c);
    return jt == it->second.end() ? NAN : jt->second;
  }
  void ratio(double num, double den, const char* what, const char* op, double target, bool is_target) {
    const double r = num / den;
    if (std::isnan(r)) return;  // not run (filtered out)
    std::fprintf(out_, "  %-62s %8.3f", what, r);
    if (is_target && op[0]) {
      const bool met = op[0] == '>' ? r >= target : r <= target;
      ++checked_;
      missed_ += met ? 0 : 1;
      std::fprintf(out_, "   target %s %g: %s", op, target, met ? "met" : "NOT MET");
    }
    std::fprintf(out_, "\n");
  }
  std::FILE* out_;
  std::map<std::string, double> seconds_;
  std::map<std::string, std::map<std::string, double>> counters_;
  std::set<std::string> from_median_;
  int checked_ = 0, missed_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  for (int i = 1; i < argc; ++i) json = json || std::strcmp(argv[i], "--benchmark_format=json") == 0;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (json) {
    RatioReporter<benchmark::JSONReporter> r(stderr);
    benchmark::RunSpecifiedBenchmarks(&r);
  } else {
    RatioReporter<benchmark::ConsoleReporter> r(stdout);
    benchmark::RunSpecifiedBenchmarks(&r);
  }
  benchmark::Shutdown();
  return 0;
}
