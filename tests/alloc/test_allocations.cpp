// Allocations on the hot paths, counted by a global operator new that this
// test binary replaces: a steady-state forward pass of the layer (every
// router, grouped and ungrouped inputs, inputs given as a tensor or as a
// view of caller memory), a steady-state route_into of every router, and a
// decode step (a few tokens, one and two threads) allocate nothing.
//
// What oneDNN allocates inside its own library while it executes a matmul
// (its memory objects) is not einmoe's and is not counted: a `new` whose
// caller lies in libdnnl is skipped. Everything einmoe's code allocates -
// a shape, a plan, a std::vector, a copied input - is.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <dlfcn.h>
#include <execinfo.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "einmoe/einmoe.hpp"

using namespace einmoe;

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};

bool from_dnnl(void* caller) {
  Dl_info info;
  return dladdr(caller, &info) != 0 && info.dli_fname && std::strstr(info.dli_fname, "libdnnl") != nullptr;
}

void* counted(std::size_t n, std::size_t align, void* caller) {
  if (counting.load(std::memory_order_relaxed) && !from_dnnl(caller)) {
    allocations.fetch_add(1);
    if (std::getenv("EINMOE_ALLOC_TRACE")) {  // where a counted allocation comes from
      counting = false;
      void* frames[24];
      const int nf = backtrace(frames, 24);
      backtrace_symbols_fd(frames, nf, 2);
      (void)write(2, "----\n", 5);
      counting = true;
    }
  }
  if (n == 0) n = 1;
  void* p =
      align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align) : std::malloc(n);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted(n, 0, __builtin_return_address(0)); }
void* operator new[](std::size_t n) { return counted(n, 0, __builtin_return_address(0)); }
void* operator new(std::size_t n, std::align_val_t a) {
  return counted(n, static_cast<std::size_t>(a), __builtin_return_address(0));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted(n, static_cast<std::size_t>(a), __builtin_return_address(0));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {

/// Allocations made by f (after two warm-up calls: the steady state).
template <class F>
long steady_allocations(F&& f) {
  f();
  f();
  allocations = 0;
  counting = true;
  f();
  counting = false;
  return allocations.load();
}

struct Weights {
  Tensor<float> wg, wi, wo, wig, swi, swo, sgate;
  MoEWeights<float> w;
  Weights(index_t M, index_t H, index_t E, bool gated_and_shared) {
    Rng r(7);
    wg = r.normal<float>(Shape{{"model", M}, {"experts", E}});
    wi = r.normal<float>(Shape{{"experts", E}, {"model", M}, {"hidden", H}});
    wo = r.normal<float>(Shape{{"experts", E}, {"hidden", H}, {"model", M}});
    w.wg = wg;
    w.experts.wi = wi;
    w.experts.wo = wo;
    if (gated_and_shared) {
      wig = r.normal<float>(Shape{{"experts", E}, {"model", M}, {"hidden", H}});
      swi = r.normal<float>(Shape{{"model", M}, {"hidden", H}});
      swo = r.normal<float>(Shape{{"hidden", H}, {"model", M}});
      sgate = r.normal<float>(Shape{{"model", M}});
      w.experts.wi_gate = wig;
      w.shared = SharedExpertWeights<float>{swi, swo, std::nullopt, sgate};
    }
  }
};

std::vector<std::pair<const char*, RouterOptions>> routers() {
  Top2Options random;
  random.policy = SecondPolicy::random;  // per-call draws, made inline
  TopKOptions deepseek;
  deepseek.k = 4;
  deepseek.score = Score::sigmoid;
  deepseek.expert_groups = 4;
  deepseek.topk_expert_groups = 2;
  deepseek.bias.assign(8, 0.01);
  deepseek.normalize = TopKNormalize::topk;
  TopKOptions bpr;
  bpr.capacity = CapacitySpec::fixed(5);
  bpr.priority = Priority::bpr;
  bpr.normalize = TopKNormalize::kept;
  return {{"top2", Top2Options{}},     {"top2 random", random}, {"topk", TopKOptions{}},
          {"topk deepseek", deepseek}, {"topk bpr", bpr},       {"expert choice", ExpertChoiceOptions{}}};
}

}  // namespace

TEST_CASE("a steady-state forward_into allocates nothing, for every router and input form", "[alloc]") {
  const index_t M = 32, H = 64, E = 8;
  const Weights W(M, H, E, true);
  Tensor<float> grouped = Rng(1).normal<float>(Shape{{"batch", 3}, {"group", 40}, {"model", M}});
  const Tensor<float> ungrouped = Rng(2).normal<float>(Shape{{"batch", 2}, {"length", 50}, {"model", M}});
  std::vector<float> caller(grouped.begin(), grouped.end());  // the caller's own memory
  const TensorView<const float> view = borrow(static_cast<const std::vector<float>&>(caller), grouped.shape());
  for (Backend b : {Backend::eigen, Backend::automatic})
    for (int threads : {1, 2})
      for (const auto& [name, router] : routers()) {
        set_num_threads(threads);
        MoEOptions o;
        o.router = router;
        o.backend = b;
        o.activation = Activation::silu;
        const MoELayer<float> layer(W.w, o);
        MoEResult<float> out;
        INFO(name << ", " << to_string(b) << ", " << threads << " threads");
        CHECK(steady_allocations([&] { layer.forward_into(out, grouped); }) == 0);
        CHECK(steady_allocations([&] { layer.forward_into(out, view); }) == 0);  // no copy of the inputs
        MoEResult<float> out2;
        CHECK(steady_allocations([&] { layer.forward_into(out2, ungrouped); }) == 0);  // regrouped by a relabel
      }
  set_num_threads(1);
}

TEST_CASE("a steady-state route_into allocates nothing, for every router", "[alloc]") {
  const Tensor<float> logits = Rng(3).normal<float>(Shape{{"batch", 4}, {"group", 33}, {"experts", 8}});
  const Tensor<float> transposed = transpose(logits, Names({"experts", "batch", "group"}));
  for (int threads : {1, 2})
    for (const auto& [name, router] : routers()) {
      set_num_threads(threads);
      RouterResult<float> r;
      RouterWorkspace<float> ws;
      INFO(name << ", " << threads << " threads");
      CHECK(steady_allocations([&] { route_into(r, logits, router, {}, MoEDims{}, RouteCall{}, ws); }) == 0);
      // logits in another order are laid out into the workspace's buffer, reused
      CHECK(steady_allocations([&] { route_into(r, transposed, router, {}, MoEDims{}, RouteCall{}, ws); }) == 0);
    }
  set_num_threads(1);
}

TEST_CASE("a decode step allocates nothing", "[alloc]") {
  const index_t M = 64, H = 128, E = 8;
  const Weights W(M, H, E, true);
  for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
    if (!backend_supports(Backend::automatic, p)) continue;
    for (int threads : {1, 2})
      for (index_t tokens : {1, 4}) {
        set_num_threads(threads);
        Top2Options g;
        g.capacity = CapacitySpec::dropless();
        MoEOptions o;
        o.router = g;
        o.precision = p;
        const MoELayer<float> layer(W.w, o);
        const Tensor<float> x = Rng(4).normal<float>(Shape{{"batch", 1}, {"group", tokens}, {"model", M}});
        MoEResult<float> out;
        INFO(to_string(p) << ", " << tokens << " tokens, " << threads << " threads");
        CHECK(steady_allocations([&] { layer.forward_into(out, x); }) == 0);
      }
  }
  set_num_threads(1);
}

TEST_CASE("the counter counts: a vector, a shape of long names, a copied tensor", "[alloc]") {
  const Tensor<float> x(Shape{{"batch", 2}, {"model", 3}});
  CHECK(steady_allocations([&] {
          std::vector<int> v(3);
          (void)v;
        }) == 1);
  CHECK(steady_allocations([&] {
          Shape s{{"a_name_longer_than_fifteen", 2}};
          (void)s;
        }) >= 1);  // (past std::string's inline 15)
  CHECK(steady_allocations([&] {
          Tensor<float> c = x;
          (void)c;
        }) == 1);
  CHECK(steady_allocations([&] {
          TensorView<const float> v = x;
          (void)v;
        }) == 0);
}

// Groups and expert blocks go to threads dynamically, so in a later call a
// thread may take an item only another thread has taken before. prepare()
// hands every thread what any thread grew to; forced here with two threads
// that each run one part (the tests above cannot force which thread takes
// what).
TEST_CASE("per-thread buffers: after prepare every thread holds what one grew to", "[alloc]") {
#if defined(_OPENMP)
  set_num_threads(2);
  RouterWorkspace<float> ws;
  ws.prepare();
  ws.thread().values(3, 1000);  // thread 0 only
  ws.thread().indices(1, 500);
  ws.prepare();
  std::vector<detail::FfnScratch<float>> scratch;
  detail::prepare_thread_scratch(scratch, 2);
  detail::FfnScratch<float>::get(scratch[0].h, 700);
  detail::prepare_thread_scratch(scratch, 2);
  allocations = 0;
  counting = true;
#pragma omp parallel num_threads(2)
  {
    ws.thread().values(3, 1000);
    ws.thread().indices(1, 500);
    detail::FfnScratch<float>::get(scratch[static_cast<std::size_t>(omp_get_thread_num())].h, 700);
  }
  counting = false;
  CHECK(allocations.load() == 0);
  CHECK(scratch[1].h.size() == 700);
  // without the second prepare, thread 1 would grow its own
  RouterWorkspace<float> fresh;
  fresh.prepare();
  fresh.thread().values(3, 1000);
  allocations = 0;
  counting = true;
#pragma omp parallel num_threads(2)
  fresh.thread().values(3, 1000);
  counting = false;
  CHECK(allocations.load() >= 1);
  set_num_threads(1);
#endif
}
