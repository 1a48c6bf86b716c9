#include <cstring>
#include <optional>
#include <thread>

#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {
template <class T>
MoEWeights<T> random_layer(index_t M, index_t H, index_t E) {
  MoEWeights<T> w;
  w.wg = shared_view(naive::random_tensor<T>(Shape{{"model", M}, {"experts", E}}));
  w.experts.wi = shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, -0.5, 0.5));
  w.experts.wo = shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, -0.5, 0.5));
  return w;
}
}  // namespace

TEST_CASE("MoE layer matches the numpy reference (GShard einsums)", "[moe][fixtures]") {
  const auto cases = fixtures::cases("moe");
  REQUIRE(cases.size() == 8);
  for (const auto& c : cases) {
    INFO(c.name);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      MoEWeights<T> w;
      w.wg = shared_view(c.load<T>("wg", {"model", "experts"}));
      w.experts.wi = shared_view(c.load<T>("wi", {"experts", "model", "hidden"}));
      w.experts.wo = shared_view(c.load<T>("wo", {"experts", "hidden", "model"}));
      if (c.has("bi")) w.experts.bi = shared_view(c.load<T>("bi", {"experts", "hidden"}));
      if (c.has("bo")) w.experts.bo = shared_view(c.load<T>("bo", {"experts", "model"}));
      MoEOptions o;
      std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(c.integer("capacity"));
      o.activation = parse_activation(c.config.at("activation"));
      const auto x = c.load<T>("inputs", {"batch", "group", "model"});
      const auto want = c.load<T>("expected_outputs", {"batch", "group", "model"});
      const T loss = c.load<T>("expected_aux_loss", {}).item();
      const double tol = c.f64 ? 1e-12 : 1e-5;
      for (bool dense : {false, true}) {
        o.dense = dense;
        const auto r = moe_forward(x, w, o);
        REQUIRE(naive::all_close(r.outputs, want, tol, tol));
        REQUIRE(naive::close(r.aux_loss, loss, tol, tol));
      }
    };
    if (c.f64) run(0.0);
    else run(0.0f);
  }
}

TEST_CASE("MoE layer: ungrouped [batch, length, model] inputs are grouped and restored", "[moe]") {
  const auto w = random_layer<double>(6, 8, 4);
  const auto x = naive::random_tensor<double>(Shape::parse("batch:3,length:10,model:6"));
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(4);
  o.max_group_size = 8;  // 30 tokens -> 3 groups of 10 (Mesh TF starts from floor(30 / 8) groups)
  MoELayer<double> layer(w, o);
  const auto r = layer.forward(x);
  CHECK(r.outputs.shape() == x.shape());
  // same as grouping by hand
  const auto grouped = reshape(x, Shape::parse("moe_groups:3,group:10,model:6"));
  const auto g = moe_forward(grouped, w, o);
  CHECK(reshape(g.outputs, x.shape()).to_vector() == r.outputs.to_vector());
  // model dim not last: outputs keep the input's dim order
  const auto xt = transpose(x, {"model", "batch", "length"});
  const auto rt = moe_forward(xt, w, o);
  CHECK(rt.outputs.shape() == xt.shape());
  CHECK(naive::all_close(transpose(rt.outputs, x.shape()), r.outputs, 1e-12));
  o.dense = true;
  CHECK(naive::all_close(moe_forward(x, w, o).outputs, r.outputs, 1e-12));
}

TEMPLATE_TEST_CASE("MoE layer: sparse equals dense on random layers and options", "[moe][property]", float, double) {
  const double tol = std::is_same<TestType, float>::value ? 1e-5 : 1e-12;
  for (int trial = 0; trial < 30; ++trial) {
    auto& g = naive::rng();
    const index_t G = std::uniform_int_distribution<index_t>(1, 3)(g),
                  S = std::uniform_int_distribution<index_t>(1, 16)(g);
    const index_t E = std::uniform_int_distribution<index_t>(1, 6)(g);
    const auto w = random_layer<TestType>(5, 7, E);
    const auto x = naive::random_tensor<TestType>(Shape{{"batch", G}, {"group", S}, {"model", 5}});
    MoEOptions o;
    std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S + 1)(g));
    std::get<Top2Options>(o.router).policy = static_cast<SecondPolicy>(trial % 5);
    std::get<Top2Options>(o.router).normalize = trial % 2 ? Normalize::after : Normalize::before;
    std::get<Top2Options>(o.router).seed = static_cast<std::uint64_t>(trial);
    o.activation = static_cast<Activation>(trial % 4);
    const auto a = moe_forward(x, w, o);
    o.dense = true;
    const auto b = moe_forward(x, w, o);
    INFO("trial " << trial);
    REQUIRE(naive::all_close(a.outputs, b.outputs, tol, tol));
    REQUIRE(naive::close(a.aux_loss, b.aux_loss, tol, tol));
    REQUIRE(a.stats.tokens_per_expert == b.stats.tokens_per_expert);
  }
}

TEST_CASE("MoE layer: all-padding groups give zero outputs", "[moe][edge]") {
  const auto w = random_layer<double>(4, 6, 3);
  const auto x = naive::random_tensor<double>(Shape::parse("batch:2,group:5,model:4"));
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(2);
  GatingInputs<double> in;
  in.importance = shared_view(Tensor<double>(Shape::parse("batch:2,group:5"), 0.0));
  for (bool dense : {false, true}) {
    o.dense = dense;
    const auto r = moe_forward(x, w, o, in);
    for (auto v : r.outputs) CHECK(v == 0.0);
    CHECK(r.aux_loss == 0.0);
  }
}

TEST_CASE("MoE layer: bad inputs name the dim", "[moe][errors]") {
  const auto w = random_layer<double>(4, 6, 3);
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(2);
  CHECK_THROWS_NAMING(moe_forward(naive::random_tensor<double>(Shape::parse("batch:2,group:5,hidden:4")), w, o),
                      shape_error, "\"model\"");
  CHECK_THROWS_NAMING(moe_forward(naive::random_tensor<double>(Shape::parse("batch:2,group:5,model:7")), w, o),
                      shape_error, "\"model\"");
  CHECK_THROWS_NAMING(moe_forward(naive::random_tensor<double>(Shape::parse("batch:0,length:5,model:4")), w, o),
                      shape_error, "no tokens");
}

TEST_CASE("MoE layer: forward_into reuses the output buffer and gives the same result", "[moe]") {
  const auto w = random_layer<float>(8, 16, 4);
  const auto x = naive::random_tensor<float>(Shape::parse("batch:2,group:12,model:8"));
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(6);
  MoELayer<float> layer(w, o);
  MoEResult<float> out;
  layer.forward_into(out, x);
  const float* buffer = out.outputs.data();
  const auto first = out.outputs.to_vector();
  layer.forward_into(out, x);
  CHECK(out.outputs.data() == buffer);
  CHECK(out.outputs.to_vector() == first);
  CHECK(layer.forward(x).outputs.to_vector() == first);
  // another shape through the same layer and workspace
  const auto y = naive::random_tensor<float>(Shape::parse("batch:3,group:5,model:8"));
  layer.forward_into(out, y);
  CHECK(out.outputs.shape() == y.shape());
  CHECK(naive::all_close(out.outputs, moe_forward(y, w, o).outputs, 1e-6));
}

namespace {
/// Restores the thread count when a test changes it.
struct ThreadGuard {
  int saved = num_threads();
  ~ThreadGuard() { set_num_threads(saved); }
};
bool bitwise_equal(const Tensor<float>& a, const Tensor<float>& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0;
}
std::vector<Backend> layer_backends() {
  if (has_dnnl()) return {Backend::dnnl, Backend::eigen};
  return {Backend::eigen};
}
}  // namespace

TEST_CASE("MoE layer: outputs, loss and routing are bitwise equal on any thread count, run after run",
          "[moe][determinism]") {
  ThreadGuard guard;
  // Enough tokens for several row blocks per expert, and a group count that
  // does not divide evenly among the threads.
  const auto w = random_layer<float>(48, 80, 6);
  const auto x = naive::random_tensor<float>(Shape::parse("batch:3,group:150,model:48"));
  for (Backend b : layer_backends())
    for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
      if (!backend_supports(b, p)) continue;
      MoEOptions o;
      std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(60);
      std::get<Top2Options>(o.router).policy = SecondPolicy::random;
      o.precision = p;
      o.backend = b;
      o.activation = Activation::gelu;
      set_num_threads(1);
      MoELayer<float> layer(w, o);
      const auto ref = layer.forward(x);
      for (int t : {1, 2, 3, 4, 1}) {
        set_num_threads(t);
        layer.set_calls(0);  // policy random: replay call 0's draws
        const auto r = layer.forward(x);
        INFO("backend " << to_string(b) << ", precision " << to_string(p) << ", " << t << " threads");
        CHECK(bitwise_equal(r.outputs, ref.outputs));
        CHECK(std::memcmp(&r.aux_loss, &ref.aux_loss, sizeof(float)) == 0);
        CHECK(r.stats.tokens_per_expert == ref.stats.tokens_per_expert);
        CHECK(bitwise_equal(layer.router_logits(x), layer.router_logits(x)));
      }
    }
}

TEST_CASE("MoE layer: decode steps (a few tokens) are bitwise equal on any thread count, experts cut by panels",
          "[moe][determinism][decode]") {
  ThreadGuard guard;
  const index_t M = 64 * 3 + 5, H = 64 * 4 + 9;
  auto w = random_layer<float>(M, H, 6);
  SharedExpertWeights<float> shared;  // a gated shared expert with a sigmoid gate, as Qwen2-MoE's
  shared.wi = shared_view(naive::random_tensor<float>(Shape{{"model", M}, {"hidden", 2 * H}}, -0.2, 0.2));
  shared.wi_gate = shared_view(naive::random_tensor<float>(Shape{{"model", M}, {"hidden", 2 * H}}, -0.2, 0.2));
  shared.wo = shared_view(naive::random_tensor<float>(Shape{{"hidden", 2 * H}, {"model", M}}, -0.2, 0.2));
  shared.gate = shared_view(naive::random_tensor<float>(Shape{{"model", M}}));
  w.shared = shared;
  for (index_t tokens : {1, 3, 8})
    for (Precision p : {Precision::fp32, Precision::bf16, Precision::int8}) {
      if (!backend_supports(Backend::dnnl, p)) continue;
      const auto x = naive::random_tensor<float>(Shape{{"batch", 1}, {"group", tokens}, {"model", M}});
      MoEOptions o;
      std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(tokens);
      o.precision = p;
      o.backend = Backend::dnnl;
      o.activation = Activation::silu;
      set_num_threads(1);
      const MoELayer<float> layer(w, o);
      const auto ref = layer.forward(x);
      INFO(tokens << " tokens, " << to_string(p));
      for (int t : {2, 3, 4}) {
        set_num_threads(t);
        const auto r = layer.forward(x);
        INFO(t << " threads");
        CHECK(bitwise_equal(r.outputs, ref.outputs));
      }
      // and at 2 threads the experts did take the split decode path
      const auto plan = top2_gating(layer.router_logits(x), std::get<Top2Options>(o.router)).plan;
      detail::ExpertBuffers<float> ws;
      detail::expert_rows(plan, H, ws);
      set_num_threads(2);
      detail::run_expert_rows(layer.experts().kernel(), layer.experts().options(), ws,
                              [&](index_t tok) { return x.data() + tok * M; });
      bool few = detail::decode_path(layer.experts().kernel(), 1);
      for (const auto& it : ws.items) few = few && it.rows <= detail::gemv::kMaxRows;
      CHECK(ws.decode_calls.size() == (few ? ws.items.size() : 0));
      if (tokens <= 3) CHECK(few == detail::decode_path(layer.experts().kernel(), 1));
      // the shared expert's block too
      const SharedExpert<float>& se = layer.shared_expert();
      std::vector<float> one(detail::uz(tokens * M), 0.5f), two = one;
      SharedExpertWorkspace<float> ws1, ws2;
      set_num_threads(1);
      se.add_to(x.data(), tokens, one.data(), ws1);
      set_num_threads(2);
      se.add_to(x.data(), tokens, two.data(), ws2);
      CHECK(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)) == 0);
      CHECK(detail::WorkspaceAccess::of(ws1).calls.empty());
      CHECK(detail::WorkspaceAccess::of(ws2).calls.size() == (detail::decode_path(se.kernel(), tokens) ? 1u : 0u));
    }
}

TEST_CASE("MoE layer: the router's logits of a group do not depend on the other groups", "[moe][determinism]") {
  const auto w = random_layer<float>(40, 8, 5);
  const auto x = naive::random_tensor<float>(Shape::parse("batch:4,group:100,model:40"));
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(30);
  const MoELayer<float> layer(w, o);
  const auto all = layer.router_logits(x);
  const auto part = layer.router_logits(slice(x, "batch", 2, 2));
  CHECK(std::memcmp(part.data(), all.data() + 2 * 100 * 5, 2 * 100 * 5 * sizeof(float)) == 0);
}

TEST_CASE("MoE layer: bf16 and int8 experts stay close to fp32, routing is the same", "[moe][precision]") {
  // Reference-like scales: weights ~ 1/sqrt(fan-in), unit inputs.
  Rng rng(5);
  MoEWeights<float> w;
  const index_t M = 64, H = 128, E = 8;
  auto init = [&](const Shape& s, double scale) {
    Tensor<float> t = rng.normal<float>(s);
    for (auto& v : t) v = static_cast<float>(v * scale);
    return t;
  };
  w.wg = shared_view(init(Shape{{"model", M}, {"experts", E}}, 1.0 / std::sqrt(double(M))));
  w.experts.wi = shared_view(init(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 1.0 / std::sqrt(double(M))));
  w.experts.wo = shared_view(init(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, 1.0 / std::sqrt(double(H))));
  const auto x = init(Shape{{"batch", 2}, {"group", 128}, {"model", M}}, 1.0);
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(40);
  for (Backend b : layer_backends()) {
    o.backend = b;
    o.precision = Precision::fp32;
    const auto ref = MoELayer<float>(w, o).forward(x);
    float ymax = 0;
    for (float v : ref.outputs) ymax = std::max(ymax, std::fabs(v));
    for (Precision p : {Precision::bf16, Precision::int8}) {
      if (!backend_supports(b, p)) continue;
      o.precision = p;
      const auto r = MoELayer<float>(w, o).forward(x);
      float err = 0;
      for (index_t i = 0; i < r.outputs.size(); ++i) err = std::max(err, std::fabs(r.outputs[i] - ref.outputs[i]));
      INFO(to_string(b) << " " << to_string(p) << ": max |delta| / max |y| = " << err / ymax);
      CHECK(err / ymax <= (p == Precision::bf16 ? 1e-2f : 3e-2f));
      CHECK(err > 0.f);  // it really ran in another precision
      CHECK(r.aux_loss == ref.aux_loss);
      CHECK(r.stats.tokens_per_expert == ref.stats.tokens_per_expert);
    }
  }
}

TEST_CASE("MoE layer: weights are laid out once and shared by concurrent callers", "[moe][concurrency]") {
  const auto w = random_layer<float>(64, 128, 5);
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(20);
  o.precision = Precision::bf16;
  // The caller's weights may go away: the layer keeps only its laid-out copy.
  std::optional<MoELayer<float>> layer;
  {
    MoEWeights<float> copy = w;
    layer.emplace(copy, o);
  }
  CHECK(layer->weight_bytes() < static_cast<std::size_t>(w.experts.wi.size() + w.experts.wo.size()) * sizeof(float));
  const auto x = naive::random_tensor<float>(Shape::parse("batch:2,group:40,model:64"));
  const auto ref = layer->forward(x);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      bool good = true;
      MoEResult<float> out;
      for (int rep = 0; rep < 5; ++rep) {
        layer->forward_into(out, x);
        good = good && bitwise_equal(out.outputs, ref.outputs);
      }
      ok[static_cast<std::size_t>(t)] = good;
    });
  for (auto& t : threads) t.join();
  CHECK(ok == std::vector<int>{1, 1, 1, 1});
}

TEST_CASE("MoE layer: borrowed and bf16 weights are read in place, read-only views are enough", "[moe]") {
  const auto w = random_layer<float>(16, 24, 4);
  // read-only views of caller memory (no owner)
  MoEWeights<float> views;
  views.wg = borrow(w.wg.data(), w.wg.shape());
  views.experts.wi = borrow(w.experts.wi.data(), w.experts.wi.shape());
  views.experts.wo = borrow(w.experts.wo.data(), w.experts.wo.shape());
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(8);
  const auto x = naive::random_tensor<float>(Shape::parse("batch:2,group:16,model:16"));
  CHECK(bitwise_equal(MoELayer<float>(views, o).forward(x).outputs, MoELayer<float>(w, o).forward(x).outputs));
  // Hugging Face layout ([out, in] per expert): same layer, no transposed copy needed by the caller
  MoEWeights<float> hf;
  hf.wg = w.wg;
  hf.experts.wi = shared_view(transpose(w.experts.wi, Names({"experts", "hidden", "model"})));
  hf.experts.wo = shared_view(transpose(w.experts.wo, Names({"experts", "model", "hidden"})));
  CHECK(bitwise_equal(MoELayer<float>(hf, o).forward(x).outputs, MoELayer<float>(w, o).forward(x).outputs));
  // bf16 weights (a checkpoint) in a float layer: the same as rounding to bf16 first
  MoEWeights<bfloat16> w16;
  w16.wg = shared_view(to_bfloat16(w.wg));
  w16.experts.wi = shared_view(to_bfloat16(w.experts.wi));
  w16.experts.wo = shared_view(to_bfloat16(w.experts.wo));
  MoEWeights<float> rounded;
  rounded.wg = shared_view(from_bfloat16<float>(w16.wg));
  rounded.experts.wi = shared_view(from_bfloat16<float>(w16.experts.wi));
  rounded.experts.wo = shared_view(from_bfloat16<float>(w16.experts.wo));
  o.precision = Precision::bf16;
  CHECK(bitwise_equal(MoELayer<float>(w16, o).forward(x).outputs, MoELayer<float>(rounded, o).forward(x).outputs));
  // ungrouped inputs: no copy in, and the caller's output buffer is reused
  const auto xu = naive::random_tensor<float>(Shape::parse("batch:2,length:16,model:16"));
  o.precision = Precision::fp32;
  const MoELayer<float> layer(w, o);
  MoEResult<float> out;
  layer.forward_into(out, xu);
  const float* buf = out.outputs.data();
  layer.forward_into(out, xu);
  CHECK(out.outputs.data() == buf);
  CHECK(out.outputs.shape() == xu.shape());
}

TEST_CASE("MoE layer: gating extras follow ungrouped inputs", "[moe]") {
  const auto w = random_layer<double>(6, 8, 4);
  const auto x = naive::random_tensor<double>(Shape::parse("batch:2,length:10,model:6"));
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(5);
  std::get<Top2Options>(o.router).policy = SecondPolicy::random;
  o.max_group_size = 10;
  GatingInputs<double> in;
  in.importance = shared_view(naive::random_ints<double>(Shape::parse("batch:2,length:10"), 0, 1));
  in.uniform = shared_view(naive::random_tensor<double>(Shape::parse("length:10,batch:2"), 0, 1));  // any dim order
  const auto r = moe_forward(x, w, o, in);
  // by hand: the same tokens grouped [moe_groups=2, group=10]
  GatingInputs<double> g;
  g.importance = reshape(*in.importance, Shape::parse("moe_groups:2,group:10"));
  g.uniform =
      shared_view(reshape(transpose(*in.uniform, Names({"batch", "length"})), Shape::parse("moe_groups:2,group:10")));
  const auto h = moe_forward(reshape(x, Shape::parse("moe_groups:2,group:10,model:6")), w, o, g);
  CHECK(reshape(h.outputs, x.shape()).to_vector() == r.outputs.to_vector());
  in.importance = shared_view(naive::random_ints<double>(Shape::parse("batch:2,length:9"), 0, 1));
  CHECK_THROWS_NAMING(moe_forward(x, w, o, in), shape_error, "importance");
}

TEST_CASE("MoE layer: random draws are fresh on every call, reproducible from (seed, call)", "[moe][random]") {
  const auto w = random_layer<double>(6, 8, 4);
  const auto x = naive::random_tensor<double>(Shape::parse("batch:2,group:12,model:6"));
  for (SecondPolicy p : {SecondPolicy::random, SecondPolicy::sampling}) {
    for (bool dense : {false, true}) {
      INFO(to_string(p) << (dense ? ", dense" : ", sparse"));
      MoEOptions o;
      std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(6);
      std::get<Top2Options>(o.router).policy = p;
      std::get<Top2Options>(o.router).threshold = 0.5;
      std::get<Top2Options>(o.router).seed = 11;
      o.dense = dense;
      MoELayer<double> layer(w, o);
      CHECK(layer.calls() == 0);
      const auto c0 = layer.forward(x), c1 = layer.forward(x), c2 = layer.forward(x);
      CHECK(layer.calls() == 3);
      // Call 0 draws what the stateless function draws from the seed; later
      // calls draw anew (the routing changes), as call_seed says.
      CHECK(c0.outputs.to_vector() == moe_forward(x, w, o).outputs.to_vector());
      CHECK(c0.outputs.to_vector() != c1.outputs.to_vector());
      CHECK(c1.outputs.to_vector() != c2.outputs.to_vector());
      MoEOptions o2 = o;
      std::get<Top2Options>(o2.router).seed = Rng::call_seed(11, 2);
      CHECK(c2.outputs.to_vector() == moe_forward(x, w, o2).outputs.to_vector());
      // Another layer with the same seed makes the same sequence; set_calls
      // replays a call.
      MoELayer<double> again(w, o);
      CHECK(again.forward(x).outputs.to_vector() == c0.outputs.to_vector());
      CHECK(again.forward(x).outputs.to_vector() == c1.outputs.to_vector());
      again.set_calls(2);
      CHECK(again.forward(x).outputs.to_vector() == c2.outputs.to_vector());
      // Explicit draws win over the call count.
      GatingInputs<double> in;
      if (p == SecondPolicy::random)
        in.uniform = shared_view(naive::random_tensor<double>(Shape::parse("batch:2,group:12"), 0, 1));
      else in.gumbel = shared_view(Rng(5).gumbel<double>(Shape::parse("batch:2,group:12,experts:4")));
      CHECK(again.forward(x, in).outputs.to_vector() == layer.forward(x, in).outputs.to_vector());
    }
  }
  // Policies without draws give the same outputs on every call.
  MoEOptions o;
  std::get<Top2Options>(o.router).capacity = CapacitySpec::fixed(6);
  const MoELayer<double> layer(w, o);
  CHECK(layer.forward(x).outputs.to_vector() == layer.forward(x).outputs.to_vector());
  // Dropout draws anew per call too.
  o.dropout = 0.5;
  o.dropout_seed = 3;
  const MoELayer<double> drop(w, o);
  const auto d0 = drop.forward(x), d1 = drop.forward(x);
  CHECK(d0.outputs.to_vector() == moe_forward(x, w, o).outputs.to_vector());
  CHECK(d0.outputs.to_vector() != d1.outputs.to_vector());
  o.dropout_seed = Rng::call_seed(3, 1);
  CHECK(d1.outputs.to_vector() == moe_forward(x, w, o).outputs.to_vector());
}

TEST_CASE("MoE layer: the default capacity follows the actual group size, grouped or not", "[moe][capacity]") {
  const auto w = random_layer<double>(6, 8, 4);
  // Ungrouped [batch, length, model]: 600 tokens split into 4 groups of 150.
  const auto x = naive::random_tensor<double>(Shape::parse("batch:2,length:300,model:6"));
  MoEOptions o;
  o.max_group_size = 128;
  REQUIRE(split_into_groups(600, 128).group_size == 150);
  MoEOptions fixed = o;
  std::get<Top2Options>(fixed.router).capacity = CapacitySpec::fixed(mtf_capacity(150, 4, 1.25));  // 46
  CHECK(std::get<Top2Options>(fixed.router).capacity.size == 46);
  const auto a = MoELayer<double>(w, o).forward(x), b = MoELayer<double>(w, fixed).forward(x);
  CHECK(a.outputs.to_vector() == b.outputs.to_vector());
  CHECK(a.stats.slots == b.stats.slots);
  // Grouped inputs of another size get their own capacity on the same layer.
  const MoELayer<double> layer(w, o);
  const auto y = naive::random_tensor<double>(Shape::parse("batch:2,group:40,model:6"));
  std::get<Top2Options>(fixed.router).capacity = CapacitySpec::fixed(mtf_capacity(40, 4, 1.25));  // 12
  CHECK(layer.forward(y).outputs.to_vector() == MoELayer<double>(w, fixed).forward(y).outputs.to_vector());
  // Expert choice: C = min(S, max(round(S cf / E), 1)) with cf = 2.
  o.router = ExpertChoiceOptions{};
  fixed = o;
  std::get<ExpertChoiceOptions>(fixed.router).capacity = CapacitySpec::fixed(20);  // round(40 * 2 / 4)
  CHECK(MoELayer<double>(w, o).forward(y).outputs.to_vector() ==
        MoELayer<double>(w, fixed).forward(y).outputs.to_vector());
  std::get<ExpertChoiceOptions>(o.router).capacity = CapacitySpec::factor(0, CapacityRule::expert_choice);
  CHECK_THROWS_NAMING(MoELayer<double>(w, o).forward(y), value_error, "capacity_factor");
}

TEST_CASE("MoE layer: movable, not copyable, and a moved layer computes the same", "[moe]") {
  static_assert(std::is_move_constructible<MoELayer<float>>::value && std::is_move_assignable<MoELayer<float>>::value);
  static_assert(!std::is_copy_constructible<MoELayer<float>>::value &&
                !std::is_copy_assignable<MoELayer<float>>::value);
  const MoEWeights<float> w = random_layer<float>(8, 12, 4);
  const auto x = naive::random_tensor<float>(Shape{{"batch", 2}, {"group", 10}, {"model", 8}});
  MoEOptions o;
  o.router = TopKOptions{};
  MoELayer<float> a(w, o);
  const MoEResult<float> want = a.forward(x);
  MoELayer<float> b(std::move(a));  // the laid-out weights and workspace move, nothing is laid out again
  const MoEResult<float> got = b.forward(x);
  CHECK(got.outputs.to_vector() == want.outputs.to_vector());
  CHECK(got.aux_loss == want.aux_loss);
  // move-assigned into a layer of other weights, and kept in a container
  MoELayer<float> c(random_layer<float>(8, 12, 4), o);
  c = std::move(b);
  std::vector<MoELayer<float>> layers;
  layers.push_back(std::move(c));
  CHECK(layers[0].forward(x).outputs.to_vector() == want.outputs.to_vector());
  CHECK(layers[0].calls() == 3);  // the call count moved with the layer
}
