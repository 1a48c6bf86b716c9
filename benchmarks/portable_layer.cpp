// The reference layer built without -march flags (see portable_layer.hpp).
#include "portable_layer.hpp"

#include <memory>

#include "bench_common.hpp"

namespace bench_portable {
namespace {

using namespace bench;

struct State {
  Reference r;
  Layer<float> L{r.G, r.S, r.M, r.H, r.E, r.C()};
  std::unique_ptr<MoELayer<float>> layer[3];
  MoEResult<float> out[3];
};
State& state() {
  static State s;
  return s;
}

}  // namespace

void prepare(int precision) {
  auto& s = state();
  if (s.layer[precision]) return;
  MoEOptions o = s.L.opt;
  o.precision = static_cast<Precision>(precision);
  s.layer[precision] = std::make_unique<MoELayer<float>>(s.L.w, o);
}

long forward(int precision) {
  auto& s = state();
  s.layer[precision]->forward_into(s.out[precision], s.L.x);
  long rows = 0;
  for (auto n : s.out[precision].stats.tokens_per_expert) rows += static_cast<long>(n);
  return rows;
}

double max_rel_difference(int precision, const float* native_outputs, long n) {
  const auto& y = state().out[precision].outputs;
  if (y.size() != n) return -1;
  float err = 0, ymax = 0;
  for (index_t i = 0; i < n; ++i) {
    err = std::max(err, std::fabs(y[i] - native_outputs[i]));
    ymax = std::max(ymax, std::fabs(native_outputs[i]));
  }
  return ymax > 0 ? double(err / ymax) : double(err);
}

const char* compiled_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__AVX__)
  return "avx";
#else
  return "sse2";
#endif
}

}  // namespace bench_portable
