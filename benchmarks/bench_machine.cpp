// The machine's limits, measured in the same run as everything else:
//   BM_PeakFMA     fp32 FMA throughput: independent chains on the widest
//                  vectors the CPU has (chosen at run time), every thread
//   BM_StreamRead  memory read bandwidth: a 1 GiB buffer summed with vector
//                  loads, every thread reading its own part
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include <sys/mman.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define BENCH_X86 1
#endif

#include "bench_common.hpp"

namespace {

using namespace bench;

constexpr int kChains = 16;

#if defined(BENCH_X86)
// (sums of lanes by hand: gcc 12 warns -Wuninitialized inside _mm512_reduce_add_ps)
__attribute__((target("avx512f"))) float lane_sum(__m512 v) {
  alignas(64) float l[16];
  _mm512_store_ps(l, v);
  float s = 0;
  for (float x : l) s += x;
  return s;
}
__attribute__((target("avx512f"))) float fma_avx512(std::int64_t iters) {
  __m512 acc[kChains];
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
  return lane_sum(s);
}
__attribute__((target("avx2,fma"))) float fma_avx2(std::int64_t iters) {
  __m256 acc[kChains];
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  __m256 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  return out[0] + out[7];
}
// Four interleaved streams (quarters of the chunk) read at once: the
// fastest read pattern measured on the development machine (about 10% above
// one sequential stream), so the bandwidth baseline is not understated.
__attribute__((target("avx512f"))) float sum_avx512(const float* p, std::size_t n) {
  const std::size_t q = n / 4;
  const float *p0 = p, *p1 = p + q, *p2 = p + 2 * q, *p3 = p + 3 * q;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  for (std::size_t i = 0; i + 32 <= q; i += 32) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p0 + i));
    b0 = _mm512_add_ps(b0, _mm512_load_ps(p0 + i + 16));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p1 + i));
    b1 = _mm512_add_ps(b1, _mm512_load_ps(p1 + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p2 + i));
    b2 = _mm512_add_ps(b2, _mm512_load_ps(p2 + i + 16));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p3 + i));
    b3 = _mm512_add_ps(b3, _mm512_load_ps(p3 + i + 16));
  }
  const __m512 a = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
  const __m512 b = _mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3));
  return lane_sum(_mm512_add_ps(a, b));
}
#endif

float fma_scalar(std::int64_t iters) {
  float acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = static_cast<float>(i);
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  float s = 0;
  for (float v : acc) s += v;
  return s;
}
float sum_scalar(const float* p, std::size_t n) {
  float a[8] = {};
  for (std::size_t i = 0; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += p[i + static_cast<std::size_t>(j)];
  return a[0] + a[7];
}

/// lanes per FMA instruction and the kernel for this CPU
struct Fma {
  int lanes;
  float (*run)(std::int64_t);
  const char* name;
};
Fma best_fma() {
#if defined(BENCH_X86)
  if (__builtin_cpu_supports("avx512f")) return {16, fma_avx512, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {8, fma_avx2, "avx2"};
#endif
  return {1, fma_scalar, "scalar"};
}

void BM_PeakFMA(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const Fma f = best_fma();
  const std::int64_t iters = 1 << 22;
  float sink = 0;
  for (auto _ : state) {
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) reduction(+ : sink) schedule(static, 1)
#endif
    for (int t = 0; t < threads; ++t) sink += f.run(iters);
  }
  benchmark::DoNotOptimize(sink);
  const double flop = 2.0 * f.lanes * kChains * static_cast<double>(iters) * threads;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(f.name);
}

/// A 1 GiB buffer, allocated and first-touched once for the whole run, on
/// 2 MiB aligned huge pages like einmoe's weight banks, so the baseline
/// reads memory the fastest way we measured.
const float* stream_buffer(std::size_t* n) {
  static const std::size_t count = (std::size_t{1} << 30) / sizeof(float);
  static const std::shared_ptr<void> buf = [] {
    constexpr std::align_val_t huge{std::size_t{1} << 21};
    std::shared_ptr<void> p(::operator new(count * sizeof(float), huge), [](void* q) { ::operator delete(q, huge); });
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    (void)madvise(p.get(), count * sizeof(float), MADV_HUGEPAGE);
#endif
    float* f = static_cast<float*>(p.get());
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(count); ++i) f[i] = 1.f;
    return p;
  }();
  *n = count;
  return static_cast<const float*>(buf.get());
}

void BM_StreamRead(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  std::size_t n = 0;
  const float* p = stream_buffer(&n);
#if defined(BENCH_X86)
  float (*sum)(const float*, std::size_t) = __builtin_cpu_supports("avx512f") ? sum_avx512 : sum_scalar;
#else
  float (*sum)(const float*, std::size_t) = sum_scalar;
#endif
  const std::int64_t chunks = 256;
  const std::size_t per = n / chunks;
  float sink = 0;
  for (auto _ : state) {
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) reduction(+ : sink) schedule(static)
#endif
    for (std::int64_t c = 0; c < chunks; ++c) sink += sum(p + static_cast<std::size_t>(c) * per, per);
  }
  benchmark::DoNotOptimize(sink);
  state.counters["GB/s"] =
      benchmark::Counter(static_cast<double>(n * sizeof(float)) * static_cast<double>(state.iterations()) / 1e9,
                         benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_PeakFMA)->Apply(thread_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_StreamRead)->Apply(thread_args)->UseRealTime()->Unit(benchmark::kMillisecond);
