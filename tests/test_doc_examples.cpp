// Every documented example compiles and runs: the headers' "// Example:"
// blocks and the cpp blocks of README.md and docs/*.md, extracted verbatim into
// doc_examples.inc by tests/tools/extract_doc_examples.cpp at build time.
//
// Each test case declares what its example uses (the inputs a reader would
// have), includes the example's text in place, then checks what the example's
// comments claim. The end of this file fails to compile if an example is
// neither included here nor listed as compiled elsewhere.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include <unistd.h>

#include "check.hpp"
#include "einmoe/einmoe.hpp"

using namespace einmoe;

// Marks an example as covered; the list at the end checks every example is.
#define EINMOE_DOC_EXAMPLE_COVERED(id) \
  namespace doc_examples_covered {     \
  constexpr bool id = true;            \
  }

namespace {

/// Deterministic values in [-1, 1).
template <class T = float>
Tensor<T> values(const Shape& s, std::uint64_t seed = 1, double scale = 1.0) {
  Rng r(seed);
  Tensor<T> t = r.uniform<T>(s);
  for (auto& v : t) v = static_cast<T>((2.0 * static_cast<double>(v) - 1.0) * scale);
  return t;
}

/// Runs in another working directory for a scope (the README's examples read
/// files by relative names).
struct InDirectory {
  std::filesystem::path old = std::filesystem::current_path();
  explicit InDirectory(const std::string& dir) { std::filesystem::current_path(dir); }
  ~InDirectory() {
    std::error_code ec;
    std::filesystem::current_path(old, ec);
  }
};

double max_abs_diff(const Tensor<float>& a, const Tensor<float>& b) {
  REQUIRE(a.shape() == b.shape());
  double d = 0;
  for (index_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
  return d;
}

/// logits [..., vocab] for ids [..., length]: prefers token (step + 2) % vocab,
/// so sequences end (eos = 1) after a few steps.
Tensor<float> toy_model(index_t step, const TensorView<const std::int64_t>& ids, index_t vocab) {
  std::vector<Dim> dims(ids.shape().begin(), ids.shape().end() - 1);
  dims.push_back(Dim{"vocab", vocab});
  Tensor<float> logits{Shape(dims)};
  for (index_t r = 0; r < logits.size() / vocab; ++r)
    for (index_t v = 0; v < vocab; ++v)
      logits[r * vocab + v] = v == (step + 2 + r) % vocab ? 2.f : static_cast<float>(v % 3) * 0.1f;
  return logits;
}

}  // namespace

EINMOE_DOC_EXAMPLE_COVERED(attention_masks_1)
TEST_CASE("doc example: attention/masks.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("heads:2,length:4,memory_length:4"));
#define EINMOE_EXAMPLE_attention_masks_1
#include "doc_examples.inc"
  CHECK(m.shape() == Shape::parse("length:4,memory_length:4"));
  CHECK(b.shape() == m.shape());
  CHECK(b.at({0, 1}) == -1e9f);
  CHECK(b.at({1, 0}) == 0.f);
  CHECK(p.shape() == logits.shape());
  CHECK(p.at({1, 0, 1}) == 0.f);
  CHECK(std::fabs(sum(p, "memory_length").at({1, 2}) - 1.f) < 1e-6f);
}

#if defined(EINMOE_HAS_JSON)
EINMOE_DOC_EXAMPLE_COVERED(checkpoints_hf_checkpoint_1)
TEST_CASE("doc example: checkpoints/hf_checkpoint.hpp", "[doc_examples]") {
  const std::string model_dir = EINMOE_FIXTURES_DIR "/checkpoints/mixtral_f32";  // its case: layer 2
  const Tensor<float> x = load_npy<float>(model_dir + "/x.npy", {"tokens", "model"});
#define EINMOE_EXAMPLE_checkpoints_hf_checkpoint_1
#include "doc_examples.inc"
  const auto want = load_npy<double>(model_dir + "/outputs.npy", {"tokens", "model"});
  REQUIRE(y.outputs.shape() == x.shape());
  for (index_t i = 0; i < want.size(); ++i) CHECK(std::fabs(double(y.outputs[i]) - want[i]) < 1e-5);
}

EINMOE_DOC_EXAMPLE_COVERED(checkpoints_safetensors_1)
TEST_CASE("doc example: checkpoints/safetensors.hpp", "[doc_examples]") {
  const std::string path = EINMOE_FIXTURES_DIR "/checkpoints/qwen2_moe_bf16/model.safetensors";
#define EINMOE_EXAMPLE_checkpoints_safetensors_1
#include "doc_examples.inc"
  CHECK(w.shape() == Shape::parse("experts:4,model:8"));
  CHECK_FALSE(w.writable());
  CHECK(w.owner() != nullptr);  // the view keeps the file's mapping alive
  REQUIRE(w32.shape() == w.shape());
  for (index_t i = 0; i < w.size(); ++i) CHECK(static_cast<float>(std::as_const(w)[i]) == w32[i]);
}

EINMOE_DOC_EXAMPLE_COVERED(checkpoints_safetensors_2)
TEST_CASE("doc example: checkpoints/safetensors.hpp, writing", "[doc_examples]") {
#define EINMOE_EXAMPLE_checkpoints_safetensors_2
#include "doc_examples.inc"
  for (index_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(i) * 0.5f;
  std::ostringstream again;
  write_safetensors(again, {{"model.layers.1.mlp.gate.weight", g}});
  const TempDir d;
  const std::string path = d.file("g.safetensors");
  {
    std::ofstream f(path, std::ios::binary);
    f << again.str();
  }
  const SafetensorsFile f(path);
  const auto back = f.tensor<float>("model.layers.1.mlp.gate.weight", {"experts", "model"});
  CHECK(back.shape() == g.shape());
  for (index_t i = 0; i < g.size(); ++i) CHECK(back[i] == g[i]);
  CHECK(os.str().size() == again.str().size());
  CHECK_THROWS_AS(write_safetensors(os, {{"a", g}, {"a", g}}), value_error);
}
#else
// Without nlohmann/json the checkpoint headers are not part of einmoe.
EINMOE_DOC_EXAMPLE_COVERED(checkpoints_hf_checkpoint_1)
EINMOE_DOC_EXAMPLE_COVERED(checkpoints_safetensors_1)
EINMOE_DOC_EXAMPLE_COVERED(checkpoints_safetensors_2)
#endif

EINMOE_DOC_EXAMPLE_COVERED(core_bfloat16_1)
TEST_CASE("doc example: core/bfloat16.hpp", "[doc_examples]") {
  const Tensor<float> w(Shape::parse("model:3"), {0.1f, 1.f, -2.5f});
#define EINMOE_EXAMPLE_core_bfloat16_1
#include "doc_examples.inc"
  CHECK(f == 0.10009765625f);
  CHECK(w16.shape() == w.shape());
  CHECK(w32[0] == f);
  CHECK(w32[1] == 1.f);
}

EINMOE_DOC_EXAMPLE_COVERED(core_dim_1)
TEST_CASE("doc example: core/dim.hpp", "[doc_examples]") {
#define EINMOE_EXAMPLE_core_dim_1
#include "doc_examples.inc"
  CHECK(s[0] == batch);
  CHECK(s.num_elements() == 8 * 512);
}

EINMOE_DOC_EXAMPLE_COVERED(core_eigen_interop_1)
TEST_CASE("doc example: core/eigen_interop.hpp", "[doc_examples]") {
  Tensor<float> x = values(Shape::parse("batch:4,length:8,model:16"));
  const Eigen::VectorXf bias = Eigen::VectorXf::LinSpaced(16, 0.f, 1.f);
#define EINMOE_EXAMPLE_core_eigen_interop_1
#include "doc_examples.inc"
  CHECK(m.rows() == 32);
  CHECK(m.cols() == 16);
  CHECK(m.data() == x.data());
  CHECK(t.shape() == Shape::parse("experts:16,model:512"));
  CHECK(t.data() == w.data());
  CHECK(v.shape() == Shape::parse("experts:16"));
  CHECK_FALSE(v.writable());
}

EINMOE_DOC_EXAMPLE_COVERED(core_random_1)
TEST_CASE("doc example: core/random.hpp", "[doc_examples]") {
  const Tensor<double> logits(Shape::parse("group:3,experts:4"));
#define EINMOE_EXAMPLE_core_random_1
#include "doc_examples.inc"
  CHECK(u.shape() == Shape::parse("batch:2,group:8"));
  for (float v : u) CHECK((v >= 0.f && v < 1.f));
  CHECK(g.shape() == logits.shape());
}

EINMOE_DOC_EXAMPLE_COVERED(core_tensor_1)
TEST_CASE("doc example: core/tensor.hpp", "[doc_examples]") {
  float buffer[6] = {};
  float* ptr = buffer;
  const float* cptr = buffer;
#define EINMOE_EXAMPLE_core_tensor_1
#include "doc_examples.inc"
  CHECK(std::as_const(x).at({1, 2}) == 5.f);
  CHECK(v.data() == std::as_const(x).data());  // no copy
  CHECK(v.at({1, 2}) == 5.f);
  CHECK(w.data() == ptr);
  w[0] = 2.f;
  CHECK(buffer[0] == 2.f);  // writes through
  CHECK(c.data() == cptr);
  static_assert(!decltype(c)::writable() && decltype(w)::writable());
  CHECK(y.data() != std::as_const(x).data());  // an owning copy
  CHECK(y.at({1, 2}) == 5.f);
}

EINMOE_DOC_EXAMPLE_COVERED(core_threads_1)
TEST_CASE("doc example: core/threads.hpp", "[doc_examples]") {
  const int before = num_threads();
  {
#define EINMOE_EXAMPLE_core_threads_1
#include "doc_examples.inc"
  } CHECK(num_threads() == 1);
  set_num_threads(before);
}

#if defined(EINMOE_HAS_XTENSOR)
EINMOE_DOC_EXAMPLE_COVERED(core_xtensor_interop_1)
TEST_CASE("doc example: core/xtensor_interop.hpp", "[doc_examples]") {
#define EINMOE_EXAMPLE_core_xtensor_interop_1
#include "doc_examples.inc"
  CHECK(t.data() == a.data());
  CHECK(t.shape() == Shape::parse("batch:2,model:3"));
  CHECK(v.data() == t.data());
  CHECK_FALSE(r.writable());
}
#else
// Without xtensor the interop header is not part of einmoe.
EINMOE_DOC_EXAMPLE_COVERED(core_xtensor_interop_1)
#endif

EINMOE_DOC_EXAMPLE_COVERED(decoding_beam_search_1)
TEST_CASE("doc example: decoding/beam_search.hpp", "[doc_examples]") {
  const auto model = [](index_t step, const TensorView<const std::int64_t>& ids, std::vector<Tensor<float>>&) {
    return toy_model(step, ids, 6);
  };
  const Tensor<std::int64_t> initial_ids(Shape::parse("batch:2,beam:3,length:5"));
#define EINMOE_EXAMPLE_decoding_beam_search_1
#include "doc_examples.inc"
  CHECK(best.shape() == initial_ids.shape());
  CHECK(scores.shape() == Shape::parse("batch:2,beam:3"));
  CHECK(scores.at({0, 0}) >= scores.at({0, 1}));
}

EINMOE_DOC_EXAMPLE_COVERED(decoding_greedy_1)
TEST_CASE("doc example: decoding/greedy.hpp", "[doc_examples]") {
  const auto model = [](index_t step, const TensorView<const std::int64_t>& ids, std::vector<Tensor<float>>&) {
    return toy_model(step, ids, 5);
  };
  const Tensor<std::int64_t> initial_ids(Shape::parse("batch:2,length:6"));
#define EINMOE_EXAMPLE_decoding_greedy_1
#include "doc_examples.inc"
  REQUIRE(r.ids.shape() == initial_ids.shape());
  CHECK(r.ids.at({0, 0}) == 2);  // argmax of step 0, row 0
  CHECK(r.ids.at({1, 0}) == 3);
}

// The expert-parallel examples need MPI: tests/mpi/test_expert_parallel.cpp
// compiles and runs them under mpirun.
EINMOE_DOC_EXAMPLE_COVERED(parallel_exchange_1)
EINMOE_DOC_EXAMPLE_COVERED(parallel_expert_parallel_1)
EINMOE_DOC_EXAMPLE_COVERED(docs_expert_parallel_1)

namespace {
ExpertWeights<float> small_experts(index_t E, index_t M, index_t H, std::uint64_t seed) {
  ExpertWeights<float> w;
  w.wi = shared_view(values(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, seed, 0.5));
  w.wo = shared_view(values(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, seed + 1, 0.5));
  return w;
}
}  // namespace

EINMOE_DOC_EXAMPLE_COVERED(experts_experts_1)
TEST_CASE("doc example: experts/experts.hpp", "[doc_examples]") {
  const Tensor<float> x = values(Shape::parse("batch:2,group:8,model:4"));
  const Tensor<float> logits = values(Shape::parse("batch:2,group:8,experts:3"), 2, 3.0);
  Top2Options o;
  o.capacity = CapacitySpec::fixed(4);
  const auto d = top2_gating_dense(logits, o);
  const auto r = top2_gating(logits, o);
  const ExpertWeights<float> w = small_experts(3, 4, 6, 3);
  const ExpertOptions opt;
#define EINMOE_EXAMPLE_experts_experts_1
#include "doc_examples.inc"
  CHECK(y1.shape() == x.shape());
  CHECK(max_abs_diff(y1, y2) < 1e-5);
}

EINMOE_DOC_EXAMPLE_COVERED(experts_shared_expert_1)
TEST_CASE("doc example: experts/shared_expert.hpp", "[doc_examples]") {
  const Dim model{"model", 4};
  const Tensor<float> wi = values(Shape::parse("model:4,hidden:6"), 1, 0.5),
                      wo = values(Shape::parse("hidden:6,model:4"), 2, 0.5);
  const Tensor<float> wig = values(Shape::parse("model:4,hidden:6"), 3, 0.5), g = values(Shape::parse("model:4"), 4);
  const ExpertOptions opt;
  const Tensor<float> x = values(Shape::parse("tokens:5,model:4"), 5);
  const index_t tokens = 5;
  Tensor<float> out(Shape::parse("tokens:5,model:4"));
#define EINMOE_EXAMPLE_experts_shared_expert_1
#include "doc_examples.inc"
  // out = sigmoid(x . g) * (relu(x . wig) * (x . wi)) . wo, by einsums
  const Tensor<float> h = relu(einsum({x, wig}, {"model"})) * einsum({x, wi}, {"model"});
  const Tensor<float> y = einsum({h, wo}, {"hidden"});
  const Tensor<float> gx = einsum({x, g}, {"model"});
  for (index_t t = 0; t < 5; ++t)
    for (index_t j = 0; j < 4; ++j)
      CHECK(std::fabs(std::as_const(out).at({t, j}) - y.at({t, j}) / (1.f + std::exp(-gx[t]))) < 1e-5f);
}

EINMOE_DOC_EXAMPLE_COVERED(io_npy_1)
TEST_CASE("doc example: io/npy.hpp", "[doc_examples]") {
  TempDir tmp;
  const std::string dir = tmp.path;
  save_npy(dir + "/x.npy", values(Shape::parse("group:2,length:3,model:4")));
  const Tensor<double> y = values<double>(Shape::parse("batch:5"));
#define EINMOE_EXAMPLE_io_npy_1
#include "doc_examples.inc"
  CHECK(x.shape() == Shape::parse("group:2,length:3,model:4"));
  CHECK(load_npy<double>(dir + "/y.npy", {"batch"}).shape() == y.shape());
  CHECK(info.dtype == DType::float32);
  CHECK(info.sizes == std::vector<index_t>{2, 3, 4});
}

EINMOE_DOC_EXAMPLE_COVERED(kernels_ffn_1)
TEST_CASE("doc example: kernels/ffn.hpp", "[doc_examples]") {
  const ExpertWeights<float> w = small_experts(3, 4, 6, 7);
  const PackedExperts<float> packed(w, ExpertOptions{});
#define EINMOE_EXAMPLE_kernels_ffn_1
#include "doc_examples.inc"
  CHECK(E == 3);
  CHECK(M == 4);
  CHECK(H == 6);
  CHECK_FALSE(glu);
}

EINMOE_DOC_EXAMPLE_COVERED(kernels_matrix_bank_1)
TEST_CASE("doc example: kernels/matrix_bank.hpp", "[doc_examples]") {
  const Tensor<float> wi = values(Shape::parse("experts:4,model:64,hidden:128"));
  const Tensor<float> wg = values(Shape::parse("model:64,experts:4"));
#define EINMOE_EXAMPLE_kernels_matrix_bank_1
#include "doc_examples.inc"
  CHECK(n == 4);
  CHECK(up.in() == 64);
  CHECK(up.out() == 128);
  CHECK(bytes == 64 * 1024);
  CHECK(router.count() == 1);
  CHECK(router.out() == 4);
}

EINMOE_DOC_EXAMPLE_COVERED(kernels_precision_1)
TEST_CASE("doc example: kernels/precision.hpp", "[doc_examples]") {
#define EINMOE_EXAMPLE_kernels_precision_1
#include "doc_examples.inc"
  CHECK(opt.precision == Precision::bf16);
  CHECK(opt.backend == Backend::automatic);
}

EINMOE_DOC_EXAMPLE_COVERED(kernels_quantize_1)
TEST_CASE("doc example: kernels/quantize.hpp", "[doc_examples]") {
  const Tensor<float> w = values(Shape::parse("experts:4,model:64,hidden:128"));
  const Tensor<float> x = values(Shape::parse("tokens:3,model:64"), 2);
#define EINMOE_EXAMPLE_kernels_quantize_1
#include "doc_examples.inc"
  CHECK(q.scales.shape() == Shape::parse("experts:4,hidden:128"));
  CHECK(max_abs_diff(w2, w) <= 1.0 / 254 + 1e-7);  // half a step of max|w| / 127, max|w| <= 1
  CHECK(a.scales.shape() == Shape::parse("tokens:3"));
}

EINMOE_DOC_EXAMPLE_COVERED(moe_local_moe_1)
TEST_CASE("doc example: moe/local_moe.hpp", "[doc_examples]") {
  const Tensor<float> x = values(Shape::parse("batch:6,model:4"));
  const Tensor<float> w_gate = values(Shape::parse("model:4,experts:3"), 2),
                      w_noise = values(Shape::parse("model:4,experts:3"), 3);
  const ExpertWeights<float> experts = small_experts(3, 4, 5, 4);
  const NoisyTopKOptions gating_opt;
  const ExpertOptions cfg;
#define EINMOE_EXAMPLE_moe_local_moe_1
#include "doc_examples.inc"
  CHECK(r.outputs.shape() == x.shape());
  CHECK(r.importance.shape() == Shape::parse("experts:3"));
  CHECK(aux >= 0.f);
}

EINMOE_DOC_EXAMPLE_COVERED(moe_moe_layer_1)
TEST_CASE("doc example: moe/moe_layer.hpp", "[doc_examples]") {
  MoEWeights<float> weights;
  weights.wg = shared_view(values(Shape::parse("model:8,experts:4")));
  weights.experts = small_experts(4, 8, 16, 2);
  const Tensor<float> x = values(Shape::parse("batch:2,group:16,model:8"), 5);
#define EINMOE_EXAMPLE_moe_moe_layer_1
#include "doc_examples.inc"
  CHECK(y.shape() == x.shape());
  CHECK(aux > 0.0);
  CHECK(stats.tokens_per_expert.size() == 4);
}

EINMOE_DOC_EXAMPLE_COVERED(training_tape_1)
TEST_CASE("doc example: training/tape.hpp", "[doc_examples]") {
  MoEWeights<float> weights;
  weights.wg = shared_view(values(Shape::parse("model:8,experts:4")));
  weights.experts = small_experts(4, 8, 16, 2);
  const Tensor<float> x = values(Shape::parse("batch:2,group:16,model:8"), 5);
  const Tensor<float> dy = values(x.shape(), 6);
#define EINMOE_EXAMPLE_training_tape_1
#include "doc_examples.inc"
  CHECK(out.outputs.shape() == x.shape());
  CHECK(g.inputs.shape() == x.shape());
  CHECK(g.wg.shape() == weights.wg.shape());
  CHECK(g.experts.wi.shape() == weights.experts.wi.shape());
  CHECK_FALSE(tape.ready());
}

EINMOE_DOC_EXAMPLE_COVERED(training_router_backward_1)
TEST_CASE("doc example: training/router_backward.hpp", "[doc_examples]") {
  const Tensor<double> logits = values<double>(Shape::parse("batch:2,group:6,experts:4"), 7);
  TopKOptions o;
  o.normalize = TopKNormalize::topk;
#define EINMOE_EXAMPLE_training_router_backward_1
#include "doc_examples.inc"
  CHECK(dlogits.shape() == logits.shape());
  double norm = 0;
  for (double v : dlogits) norm += std::abs(v);
  CHECK(norm > 0);
}

EINMOE_DOC_EXAMPLE_COVERED(docs_gradients_1)
TEST_CASE("doc example: docs/gradients.md", "[doc_examples]") {
  MoEWeights<float> weights;
  weights.wg = shared_view(values(Shape::parse("model:8,experts:4")));
  weights.experts = small_experts(4, 8, 16, 2);
  const Tensor<float> x = values(Shape::parse("batch:2,group:16,model:8"), 5);
  const Tensor<float> dy = values(x.shape(), 6);
#define EINMOE_EXAMPLE_docs_gradients_1
#include "doc_examples.inc"
  CHECK(out.outputs.shape() == x.shape());
  CHECK(g.experts.wo.shape() == weights.experts.wo.shape());
  CHECK(out.z_loss > 0.f);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_capacity_2)
TEST_CASE("doc example: routers/capacity.hpp, CapacitySpec", "[doc_examples]") {
#define EINMOE_EXAMPLE_routers_capacity_2
#include "doc_examples.inc"
  CHECK(c == 80);
  CHECK(o.capacity.kind == CapacitySpec::Kind::factor);
  CHECK(t.capacity.kind == CapacitySpec::Kind::dropless);
}

EINMOE_DOC_EXAMPLE_COVERED(moe_t2t_hierarchical_1)
TEST_CASE("doc example: moe/t2t_hierarchical.hpp", "[doc_examples]") {
  const Tensor<float> x = values(Shape::parse("batch:6,model:4"));
  const Tensor<float> w_gate = values(Shape::parse("model:4,outer_experts:2"), 2);
  const Tensor<float> w_gate_inner = values(Shape::parse("outer_experts:2,model:4,inner_experts:3"), 3);
  const Tensor<float> wi = values(Shape::parse("outer_experts:2,inner_experts:3,model:4,hidden:5"), 4, 0.5);
  const Tensor<float> wo = values(Shape::parse("outer_experts:2,inner_experts:3,hidden:5,model:4"), 5, 0.5);
  const T2THierarchicalOptions opt;
#define EINMOE_EXAMPLE_moe_t2t_hierarchical_1
#include "doc_examples.inc"
  CHECK(y.shape() == x.shape());
  CHECK(load.shape() == Shape::parse("outer_experts:2,inner_experts:3"));
  CHECK(aux >= 0.f);
}

EINMOE_DOC_EXAMPLE_COVERED(ops_cumsum_1)
TEST_CASE("doc example: ops/cumsum.hpp", "[doc_examples]") {
  const Tensor<int> x(Shape::parse("group:4"), {1, 2, 3, 4});
#define EINMOE_EXAMPLE_ops_cumsum_1
#include "doc_examples.inc"
  CHECK(std::vector<int>(c.begin(), c.end()) == std::vector<int>{1, 3, 6, 10});
  CHECK(std::vector<int>(e.begin(), e.end()) == std::vector<int>{0, 1, 3, 6});
}

EINMOE_DOC_EXAMPLE_COVERED(ops_einsum_1)
TEST_CASE("doc example: ops/einsum.hpp", "[doc_examples]") {
  const Tensor<float> x = values(Shape::parse("group:4,length:128,model:8"));
  const Tensor<float> w = values(Shape::parse("model:8,hidden:256"), 2);
#define EINMOE_EXAMPLE_ops_einsum_1
#include "doc_examples.inc"
  CHECK(h.shape() == Shape::parse("group:4,length:128,hidden:256"));
  CHECK(max_abs_diff(y, h) == 0);
  CHECK(max_abs_diff(z, h) == 0);
}

EINMOE_DOC_EXAMPLE_COVERED(ops_elementwise_1)
TEST_CASE("doc example: ops/elementwise.hpp", "[doc_examples]") {
#define EINMOE_EXAMPLE_ops_elementwise_1
#include "doc_examples.inc"
  CHECK(y.shape() == Shape::parse("batch:2,model:3"));
  static_assert(std::is_same<decltype(m), Tensor<bool>>::value, "greater gives bools");
  CHECK(m.shape() == y.shape());
}

EINMOE_DOC_EXAMPLE_COVERED(ops_index_1)
TEST_CASE("doc example: ops/index.hpp", "[doc_examples]") {
  const Tensor<float> x(Shape::parse("group:3,experts:4"), {0, 3, 1, 2, 5, 4, 6, 0, 1, 1, 0, 0});
#define EINMOE_EXAMPLE_ops_index_1
#include "doc_examples.inc"
  CHECK(v.shape() == Shape::parse("group:3"));
  CHECK(std::vector<std::int64_t>(i.begin(), i.end()) == std::vector<std::int64_t>{1, 2, 0});
  CHECK(oh.shape() == x.shape());
  CHECK(t.values.shape() == Shape::parse("group:3,k:2"));
  CHECK(t.indices.at({2, 1}) == 1);  // tie: the lower index first
}

EINMOE_DOC_EXAMPLE_COVERED(ops_manip_1)
TEST_CASE("doc example: ops/manip.hpp", "[doc_examples]") {
  const Tensor<float> x = values(Shape::parse("batch:2,length:3,model:4"));
#define EINMOE_EXAMPLE_ops_manip_1
#include "doc_examples.inc"
  CHECK(t.shape() == Shape::parse("model:4,batch:2,length:3"));
  CHECK(r.shape() == Shape::parse("batch:2,memory_length:3,model:4"));
  CHECK(s.shape() == Shape::parse("batch:2,length:2,model:4"));
  CHECK(c.shape() == Shape::parse("batch:2,length:6,model:4"));
  CHECK(k.shape() == Shape::parse("copy:2,batch:2,length:3,model:4"));
}

EINMOE_DOC_EXAMPLE_COVERED(ops_reduce_1)
TEST_CASE("doc example: ops/reduce.hpp", "[doc_examples]") {
  const Tensor<float> x = values(Shape::parse("batch:2,group:3,experts:4"));
#define EINMOE_EXAMPLE_ops_reduce_1
#include "doc_examples.inc"
  CHECK(s.shape() == Shape::parse("batch:2,experts:4"));
  CHECK(t.shape() == Shape::parse("experts:4,batch:2"));
  CHECK(m.shape() == Shape::parse("experts:4"));
}

EINMOE_DOC_EXAMPLE_COVERED(ops_softmax_1)
TEST_CASE("doc example: ops/softmax.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("group:3,experts:4"));
#define EINMOE_EXAMPLE_ops_softmax_1
#include "doc_examples.inc"
  CHECK(p.shape() == logits.shape());
  CHECK(l.shape() == Shape::parse("group:3"));
}

EINMOE_DOC_EXAMPLE_COVERED(routers_capacity_1)
TEST_CASE("doc example: routers/capacity.hpp", "[doc_examples]") {
#define EINMOE_EXAMPLE_routers_capacity_1
#include "doc_examples.inc"
  CHECK(a == 80);
  CHECK(b == 80);
  CHECK(c == 160);
  CHECK(d == 80);
  CHECK(e == 128);
  CHECK(g.num_groups == 4);
  CHECK(g.group_size == 1024);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_expert_choice_1)
TEST_CASE("doc example: routers/expert_choice.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("batch:1,group:128,experts:4"));
#define EINMOE_EXAMPLE_routers_expert_choice_1
#include "doc_examples.inc"
  CHECK(d.combine.shape() == Shape::parse("batch:1,group:128,experts:4,expert_capacity:64"));
  CHECK(max_abs_diff(r.plan.combine_tensor(), d.combine) < 1e-6);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_losses_1)
TEST_CASE("doc example: routers/losses.hpp", "[doc_examples]") {
  const Tensor<float> importance(Shape::parse("experts:4"), {1, 1, 1, 1});
#define EINMOE_EXAMPLE_routers_losses_1
#include "doc_examples.inc"
  CHECK(std::fabs(l) < 1e-6f);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_noisy_topk_1)
TEST_CASE("doc example: routers/noisy_topk.hpp", "[doc_examples]") {
  const Tensor<float> x = values(Shape::parse("batch:6,model:4"));
  const Tensor<float> w_gate = values(Shape::parse("model:4,experts:4"), 2),
                      w_noise = values(Shape::parse("model:4,experts:4"), 3);
#define EINMOE_EXAMPLE_routers_noisy_topk_1
#include "doc_examples.inc"
  CHECK(r.gates.shape() == Shape::parse("batch:6,experts:4"));
  index_t routed = 0;
  for (const auto& part : d.dispatch(x)) routed += part.size_of("batch");
  CHECK(routed == 6 * 2);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_route_1)
TEST_CASE("doc example: routers/route.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("batch:2,group:16,experts:8"), 1, 2.0);
#define EINMOE_EXAMPLE_routers_route_1
#include "doc_examples.inc"
  CHECK(r.plan.k == 8);
  CHECK(max_abs_diff(r.plan.combine_tensor(), d.combine) < 1e-6);
  CHECK(std::string(name) == "topk");
}

EINMOE_DOC_EXAMPLE_COVERED(routers_router_1)
TEST_CASE("doc example: routers/router.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("batch:2,length:8,experts:4"), 1, 2.0);
#define EINMOE_EXAMPLE_routers_router_1
#include "doc_examples.inc"
  CHECK(plan.group == Dim("length", 8));
  CHECK(plan.groups() == 2);
  CHECK(aux > 0.f);
  CHECK(z > 0.f);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_sentence_gating_1)
TEST_CASE("doc example: routers/sentence_gating.hpp", "[doc_examples]") {
  const Tensor<float> x = values(Shape::parse("batch:2,group:6,model:4"));
  const Tensor<std::int64_t> segment_ids(Shape::parse("batch:2,group:6"), {1, 1, 2, 2, 2, 0, 3, 3, 3, 3, 4, 4});
  const Tensor<float> wg = values(Shape::parse("model:4,experts:3"), 2);
  const Tensor<float> task_embeddings = values(Shape::parse("batch:2,group:6,model:4"), 3);
  Top2Options opt;
  opt.capacity = CapacitySpec::fixed(4);
#define EINMOE_EXAMPLE_routers_sentence_gating_1
#include "doc_examples.inc"
  CHECK(emb.shape() == x.shape());
  CHECK(emb.at({0, 5, 0}) == 0.f);  // id 0: padding
  CHECK(r.plan.experts.size == 3);
  CHECK(t.plan.experts.size == 3);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_sparse_dispatcher_1)
TEST_CASE("doc example: routers/sparse_dispatcher.hpp", "[doc_examples]") {
  const Tensor<float> gates(Shape::parse("batch:3,experts:3"), {0.5f, 0.5f, 0, 0, 1, 0, 0.25f, 0, 0.75f});
  const Tensor<float> x = values(Shape::parse("batch:3,model:4"));
  const auto run_experts = [](const std::vector<Tensor<float>>& parts) { return parts; };  // identity experts
#define EINMOE_EXAMPLE_routers_sparse_dispatcher_1
#include "doc_examples.inc"
  CHECK(parts.size() == 3);
  CHECK(parts[1].size_of("batch") == 2);
  CHECK(max_abs_diff(y, x) < 1e-6);  // each row's gates sum to 1
  CHECK(g[2].size() == 1);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_top2_gating_1)
TEST_CASE("doc example: routers/top2_gating.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("batch:4,group:1024,experts:16"), 1, 2.0);
#define EINMOE_EXAMPLE_routers_top2_gating_1
#include "doc_examples.inc"
  CHECK(plan.experts.size == 16);
  CHECK(plan.capacity.size == 160);
  CHECK(aux > 0.0);
  CHECK(stats.tokens_per_expert.size() == 16);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_top2_gating_dense_1)
TEST_CASE("doc example: routers/top2_gating_dense.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("batch:1,group:8,experts:4"), 1, 2.0);
  Top2Options opt;
  opt.capacity = CapacitySpec::fixed(3);
#define EINMOE_EXAMPLE_routers_top2_gating_dense_1
#include "doc_examples.inc"
  CHECK(combine.shape() == Shape::parse("batch:1,group:8,experts:4,expert_capacity:3"));
  CHECK(aux == Approx(top2_gating(logits, opt).aux_loss));
}

EINMOE_DOC_EXAMPLE_COVERED(routers_top2_gating_mtf_v1_1)
TEST_CASE("doc example: routers/top2_gating_mtf_v1.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("batch:2,group:8,experts:4"), 1, 2.0);
  const Tensor<float> max_experts(Shape::parse("batch:2,group:8"), 1.f);  // first choices only
#define EINMOE_EXAMPLE_routers_top2_gating_mtf_v1_1
#include "doc_examples.inc"
  CHECK(max_abs_diff(r.plan.combine_tensor(), d.combine) < 1e-6);
  CHECK(r.stats.second_kept == 0);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_topk_1)
TEST_CASE("doc example: routers/topk.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("batch:1,group:16,experts:64"), 1, 2.0);
  const std::vector<double> e_score_correction_bias(64, 0.01);
#define EINMOE_EXAMPLE_routers_topk_1
#include "doc_examples.inc"
  CHECK(plan.k == 8);
  CHECK(plan.experts.size == 64);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_topk_dense_1)
TEST_CASE("doc example: routers/topk_dense.hpp", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("batch:1,group:8,experts:4"), 1, 2.0);
  TopKOptions o;
  o.capacity = CapacitySpec::fixed(3);
#define EINMOE_EXAMPLE_routers_topk_dense_1
#include "doc_examples.inc"
  CHECK(combine.shape() == Shape::parse("batch:1,group:8,experts:4,expert_capacity:3"));
  CHECK(dispatch.shape() == combine.shape());
  CHECK(aux == Approx(topk_routing(logits, o).aux_loss));
  CHECK(z > 0.0);
}

EINMOE_DOC_EXAMPLE_COVERED(routers_truncated_gating_1)
TEST_CASE("doc example: routers/truncated_gating.hpp", "[doc_examples]") {
  const Tensor<float> gates = softmax(values(Shape::parse("batch:1,group:8,experts:4"), 1, 2.0), "experts");
  Top2Options opt;
  opt.capacity = CapacitySpec::fixed(3);
#define EINMOE_EXAMPLE_routers_truncated_gating_1
#include "doc_examples.inc"
  CHECK(combine.shape() == Shape::parse("batch:1,group:8,experts:4,expert_capacity:3"));
  CHECK(max_abs_diff(plan.combine_tensor(), combine) < 1e-6);
}

// README.md

// Its first block is examples/quickstart.cpp, built as an example program;
// the readme_quotes_quickstart test checks the README quotes it exactly.
EINMOE_DOC_EXAMPLE_COVERED(readme_1)

EINMOE_DOC_EXAMPLE_COVERED(readme_2)
EINMOE_DOC_EXAMPLE_COVERED(readme_3)
TEST_CASE("doc example: README, An MoE layer", "[doc_examples]") {
  TempDir tmp;
  const index_t M = 8, H = 16, E = 16;
  save_npy(tmp.file("wg.npy"), values(Shape{{"model", M}, {"experts", E}}, 1));
  save_npy(tmp.file("wi.npy"), values(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 2, 0.5));
  save_npy(tmp.file("wo.npy"), values(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, 3, 0.5));
  save_npy(tmp.file("wi_gate.npy"), values(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 4, 0.5));
  const Tensor<float> x = values(Shape{{"batch", 2}, {"group", 32}, {"model", M}}, 5);
  const std::vector<double> e_score_correction_bias(E, 0.0);
  const Tensor<float> wi_s = values(Shape{{"model", M}, {"hidden", 6}}, 6),
                      wo_s = values(Shape{{"hidden", 6}, {"model", M}}, 7);
  const Tensor<float> wi_gate_s = values(Shape{{"model", M}, {"hidden", 6}}, 8), gate = values(Shape{{"model", M}}, 9);
  InDirectory in(tmp.path);
#define EINMOE_EXAMPLE_readme_2
#define EINMOE_EXAMPLE_readme_3
#include "doc_examples.inc"
  CHECK(outputs.shape() == x.shape());
  CHECK(aux_loss > 0.f);
  CHECK(stats.tokens_per_expert.size() == 16);
  CHECK(y.outputs.shape() == x.shape());
  CHECK(y.z_loss > 0.f);
}

#if defined(EINMOE_HAS_JSON)
EINMOE_DOC_EXAMPLE_COVERED(docs_checkpoints_1)
TEST_CASE("doc example: docs/checkpoints.md", "[doc_examples]") {
  TempDir tmp;
  const std::string fixture = EINMOE_FIXTURES_DIR "/checkpoints/qwen2_moe_bf16";  // its case: layer 1
  std::filesystem::create_directory_symlink(fixture, tmp.file("Qwen1.5-MoE-A2.7B"));
  const Tensor<float> x = load_npy<float>(fixture + "/x.npy", {"tokens", "model"});
  InDirectory in(tmp.path);
#define EINMOE_EXAMPLE_docs_checkpoints_1
#include "doc_examples.inc"
  const auto want = load_npy<double>(fixture + "/outputs.npy", {"tokens", "model"});
  REQUIRE(y.outputs.shape() == x.shape());
  for (index_t i = 0; i < want.size(); ++i) CHECK(std::fabs(double(y.outputs[i]) - want[i]) < 3e-2);
}
#else
EINMOE_DOC_EXAMPLE_COVERED(docs_checkpoints_1)
#endif

EINMOE_DOC_EXAMPLE_COVERED(docs_decoding_1)
TEST_CASE("doc example: docs/decoding.md", "[doc_examples]") {
  const Tensor<float> logits = values(Shape::parse("length:8,memory_length:8"));
  const auto logits_fn = [](index_t step, const TensorView<const std::int64_t>& ids, std::vector<Tensor<float>>&) {
    return toy_model(step, ids, 7);
  };
  const Tensor<std::int64_t> initial_ids(Shape::parse("batch:1,beam:2,length:6"));
  const std::vector<Tensor<float>> kv_cache{Tensor<float>(Shape::parse("batch:1,beam:2,heads:2"))};
#define EINMOE_EXAMPLE_docs_decoding_1
#include "doc_examples.inc"
  CHECK(p.shape() == logits.shape());
  CHECK(bias.shape() == vis.shape());
  CHECK(r.ids.shape() == initial_ids.shape());
  CHECK(g.ids.shape() == initial_ids.shape());
}

// docs/building.md's EINMOE_INSTANTIATE_GEMM block is tests/gemm_instances.cpp's
// code: that file includes it, and every test program links it.
EINMOE_DOC_EXAMPLE_COVERED(docs_building_1)

// docs/tensors.md
EINMOE_DOC_EXAMPLE_COVERED(docs_tensors_1)
TEST_CASE("doc example: docs/tensors.md", "[doc_examples]") {
#define EINMOE_EXAMPLE_docs_tensors_1
#include "doc_examples.inc"
  CHECK(first == 1.f);
  CHECK(v.data() == static_cast<const Tensor<float>&>(x).data());  // a view, not a copy
  CHECK(flat.data() == v.data());
  CHECK(flat.shape() == Shape{{"rows", 6}});
  CHECK(y.data() != v.data());  // an owning copy
  CHECK(y.to_vector() == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(w.data() == buf.data());
  CHECK(buf[0] == 1.f);
}

// Every example in doc_examples.inc is covered above (a compile error names
// the one that is not).
#undef EINMOE_DOC_EXAMPLE_COVERED
#define EINMOE_DOC_EXAMPLE_LIST(id) static_assert(doc_examples_covered::id, "doc example " #id);
#include "doc_examples.inc"
