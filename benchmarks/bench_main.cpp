// The suite's main: runs the benchmarks, then prints the target ratios, each
// measured against its baseline in the same run:
//   BM_EinsumGemm / BM_EigenGemm throughput            target >= 0.85
//   BM_MoELayer/sparse / BM_ExpertGemmFloor time       target <= 1.25 (1 thread)
//   BM_MoELayer/dense / BM_MoELayer/sparse time        (how much the sparse path saves)
//   routing time per token, S = 8192 vs S = 256        target <= 1.5 (sparse)
// With --benchmark_format=json the JSON goes to stdout and the ratios to stderr.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

template <class Base>
class RatioReporter : public Base {
 public:
  explicit RatioReporter(std::FILE* out) : out_(out) {}
  void ReportRuns(const std::vector<benchmark::BenchmarkReporter::Run>& runs) override {
    for (const auto& r : runs)
      if (r.run_type == benchmark::BenchmarkReporter::Run::RT_Iteration && !r.error_occurred)
        seconds_[r.benchmark_name()] = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
    Base::ReportRuns(runs);
  }
  void Finalize() override {
    Base::Finalize();
    std::fprintf(out_, "\nRatios (measured in this run):\n");
    for (const std::string& t : std::vector<std::string>{"1", threads_max()}) {
      if (t.empty()) continue;
      ratio("einsum GEMM throughput / Eigen GEMM", "BM_EigenGemm/" + t, "BM_EinsumGemm/" + t, ">= 0.85", t);
      ratio("MoE layer sparse time / expert-GEMM floor", "BM_MoELayer/sparse/" + t, "BM_ExpertGemmFloor/" + t,
            "<= 1.25", t);
      ratio("MoE layer dense time / sparse time", "BM_MoELayer/dense/" + t, "BM_MoELayer/sparse/" + t, "", t);
      ratio("routing per token, sparse, S=8192 / S=256", "BM_RoutingScaling/sparse/8192/" + t,
            "BM_RoutingScaling/sparse/256/" + t, "<= 1.5", t);
      ratio("routing per token, dense, S=8192 / S=256", "BM_RoutingScaling/dense/8192/" + t,
            "BM_RoutingScaling/dense/256/" + t, "", t);
    }
  }

 private:
  std::string threads_max() const {
    int best = 1;
    for (const auto& kv : seconds_) {
      const auto slash = kv.first.rfind('/');
      const auto name = kv.first.substr(0, slash);  // drop "/real_time"
      const auto s2 = name.rfind('/');
      if (s2 != std::string::npos) best = std::max(best, std::atoi(name.c_str() + s2 + 1));
    }
    return best > 1 ? std::to_string(best) : std::string();
  }
  void ratio(const char* what, const std::string& num, const std::string& den, const char* target, const std::string& t) {
    const auto a = seconds_.find(num + "/real_time"), b = seconds_.find(den + "/real_time");
    if (a == seconds_.end() || b == seconds_.end()) return;
    std::fprintf(out_, "  %-45s %s thread(s): %6.3f   %s\n", what, t.c_str(), a->second / b->second, target);
  }
  std::FILE* out_;
  std::map<std::string, double> seconds_;
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
