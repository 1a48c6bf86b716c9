// The layer's backward pass against central finite differences of the
// forward (double; the dense oracle and the fast path), for every router of
// the layer and its options, the expert kinds, biases, dropout and shared
// experts; bitwise determinism over thread counts; bad input.
#include <cmath>
#include <functional>
#include <string>

#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {

/// A small layer's weights (double), owned.
struct Layer {
  std::vector<Tensor<double>> hold;
  MoEWeights<double> w;
  Layer(index_t M, index_t H, index_t E, bool gated, bool biases, bool shared, bool shared_gate, std::uint64_t seed) {
    Rng r(seed);
    auto add = [&](Shape s, double scale) {
      hold.push_back(r.normal<double>(s));
      for (auto& v : hold.back()) v *= scale;
      return TensorView<const double>(hold.back());
    };
    hold.reserve(16);
    w.wg = add(Shape{{"model", M}, {"experts", E}}, 0.8);
    w.experts.wi = add(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 0.5);
    w.experts.wo = add(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, 0.5);
    if (gated) w.experts.wi_gate = add(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 0.5);
    if (biases) {
      w.experts.bi = add(Shape{{"experts", E}, {"hidden", H}}, 0.3);
      if (gated) w.experts.bi_gate = add(Shape{{"experts", E}, {"hidden", H}}, 0.3);
      w.experts.bo = add(Shape{{"experts", E}, {"model", M}}, 0.3);
    }
    if (shared) {
      SharedExpertWeights<double> s{add(Shape{{"model", M}, {"hidden", H + 1}}, 0.5),
                                    add(Shape{{"hidden", H + 1}, {"model", M}}, 0.5), std::nullopt, std::nullopt};
      if (gated) s.wi_gate = add(Shape{{"model", M}, {"hidden", H + 1}}, 0.5);
      if (shared_gate) s.gate = add(Shape{{"model", M}}, 0.5);
      w.shared = s;
    }
  }
  /// Every weight tensor (mutable, for the finite differences), with its name.
  std::vector<std::pair<std::string, double*>> params() {
    std::vector<std::pair<std::string, double*>> p;
    auto put = [&](const char* n, const TensorView<const double>& v) {
      p.push_back({n, const_cast<double*>(v.data())});  // NOLINT: the test owns the memory
    };
    auto opt = [&](const char* n, const std::optional<TensorView<const double>>& v) {
      if (v) put(n, *v);
    };
    put("wg", w.wg), put("wi", w.experts.wi), put("wo", w.experts.wo);
    opt("wi_gate", w.experts.wi_gate), opt("bi", w.experts.bi), opt("bi_gate", w.experts.bi_gate),
        opt("bo", w.experts.bo);
    if (w.shared) {
      put("shared wi", w.shared->wi), put("shared wo", w.shared->wo);
      opt("shared wi_gate", w.shared->wi_gate), opt("shared gate", w.shared->gate);
    }
    return p;
  }
};

/// The gradient tensor of a named parameter.
const Tensor<double>& grad_of(const MoEGradients<double>& g, const std::string& n) {
  if (n == "wg") return g.wg;
  if (n == "wi") return g.experts.wi;
  if (n == "wo") return g.experts.wo;
  if (n == "wi_gate") return *g.experts.wi_gate;
  if (n == "bi") return *g.experts.bi;
  if (n == "bi_gate") return *g.experts.bi_gate;
  if (n == "bo") return *g.experts.bo;
  if (n == "shared wi") return g.shared->wi;
  if (n == "shared wo") return g.shared->wo;
  if (n == "shared wi_gate") return *g.shared->wi_gate;
  return *g.shared->gate;
}

double objective(const MoEResult<double>& r, const Tensor<double>& dy, const LossCoefficients& c) {
  double s = 0.0;
  for (index_t i = 0; i < dy.size(); ++i) s += r.outputs[i] * dy[i];
  return s + c.aux_loss * r.aux_loss + c.z_loss * r.z_loss;
}

/// Checks the fast backward against central differences of the forward
/// (the dense oracle when `dense`, else the fast path), every element of
/// every weight and of the inputs.
void check_gradients(Layer& L, MoEOptions o, Tensor<double> x, const LossCoefficients& c,
                     const GatingInputs<double>& extras = {}, bool dense = true) {
  set_num_threads(1);  // (thousands of tiny forward passes: no thread wake-ups under a parallel ctest)
  Tensor<double> dy = Rng(99).normal<double>(x.shape());
  MoEOptions to = o;
  to.trainable = true;
  const MoELayer<double> layer(L.w, to);
  MoETape<double> tape;
  const MoEResult<double> out = layer.forward_train(x, tape, extras);
  // the training forward computes what the inference forward does
  const MoEResult<double> ref = moe_forward(TensorView<const double>(x), L.w, o, extras);
  REQUIRE(naive::all_close(out.outputs, ref.outputs, 1e-12, 1e-12));
  REQUIRE(out.aux_loss == Approx(ref.aux_loss).margin(1e-14));
  const MoEGradients<double> g = layer.backward(tape, dy, c);
  REQUIRE(g.inputs.shape() == x.shape());
  MoEOptions fo = o;
  fo.dense = dense;
  auto f = [&] { return objective(moe_forward(TensorView<const double>(x), L.w, fo, extras), dy, c); };
  const double h = 1e-6;
  auto check = [&](const std::string& name, double* p, index_t n, const Tensor<double>& grad) {
    REQUIRE(grad.size() == n);
    for (index_t i = 0; i < n; ++i) {
      const double keep = p[i];
      p[i] = keep + h;
      const double up = f();
      p[i] = keep - h;
      const double down = f();
      p[i] = keep;
      const double fd = (up - down) / (2 * h);
      INFO(name << "[" << i << "]: finite difference " << fd << ", backward " << grad[i]);
      CHECK(std::abs(fd - grad[i]) <= 1e-6 * std::max(1.0, std::abs(fd)));
    }
  };
  for (auto& [name, p] : L.params()) {
    const Tensor<double>& gr = grad_of(g, name);
    check(name, p, gr.size(), gr);
  }
  check("inputs", x.data(), x.size(), g.inputs);
}

Tensor<double> inputs(index_t G, index_t S, index_t M, std::uint64_t seed = 5) {
  return Rng(seed).normal<double>(Shape{{"batch", G}, {"group", S}, {"model", M}});
}

}  // namespace

TEST_CASE("backward: top-2 gating, every policy and normalization, against finite differences", "[backward]") {
  for (auto policy :
       {SecondPolicy::all, SecondPolicy::none, SecondPolicy::threshold, SecondPolicy::random, SecondPolicy::sampling})
    for (auto norm : {Normalize::before, Normalize::after})
      for (bool second_place : {false, true}) {
        Layer L(5, 4, 4, false, false, false, false, 11);
        Top2Options t;
        t.policy = policy;
        t.normalize = norm;
        t.second_place_loss = second_place;
        t.threshold = 0.2;
        t.capacity = CapacitySpec::fixed(3);  // 2 groups of 7 tokens: some choices are dropped
        MoEOptions o;
        o.router = t;
        INFO(to_string(policy) << ", normalize " << (norm == Normalize::before ? "before" : "after")
                               << (second_place ? ", second-place loss" : ""));
        check_gradients(L, o, inputs(2, 7, 5), {0.7, 0.0});
      }
}

TEST_CASE("backward: top-2 with importance (padding) and ties to the highest index", "[backward]") {
  Layer L(4, 3, 4, false, true, false, false, 12);
  Top2Options t;
  t.capacity = CapacitySpec::fixed(4);
  t.ties = Ties::highest;
  t.normalize = Normalize::after;
  MoEOptions o;
  o.router = t;
  Tensor<double> imp(Shape{{"batch", 2}, {"group", 6}});
  for (index_t i = 0; i < imp.size(); ++i) imp[i] = i % 5 == 0 ? 0.0 : i % 4 == 1 ? 0.5 : 1.0;
  GatingInputs<double> in;
  in.importance = TensorView<const double>(imp);
  check_gradients(L, o, inputs(2, 6, 4), {0.4, 0.0}, in);
}

TEST_CASE("backward: top-k, every score, normalization, priority and expert groups", "[backward]") {
  struct Case {
    const char* name;
    TopKOptions o;
  };
  std::vector<Case> cases;
  TopKOptions base;
  base.k = 2;
  cases.push_back({"softmax, dropless", base});
  TopKOptions cap = base;
  cap.capacity = CapacitySpec::fixed(2);
  cases.push_back({"softmax, capacity 2, choice priority", cap});
  TopKOptions kept = cap;
  kept.normalize = TopKNormalize::kept;
  kept.priority = Priority::bpr;
  cases.push_back({"softmax, kept, bpr", kept});
  TopKOptions tok = cap;
  tok.normalize = TopKNormalize::topk;
  tok.priority = Priority::token;
  tok.scale = 1.7;
  cases.push_back({"softmax, topk, token priority, scale", tok});
  TopKOptions ds;
  ds.k = 3;
  ds.score = Score::sigmoid;
  ds.bias = {0.1, -0.2, 0.05, 0.3, -0.1, 0.0};
  ds.expert_groups = 3;
  ds.topk_expert_groups = 2;
  ds.normalize = TopKNormalize::topk;
  ds.scale = 2.5;
  cases.push_back({"sigmoid, bias, expert groups (DeepSeek-V3)", ds});
  TopKOptions sk = ds;
  sk.normalize = TopKNormalize::kept;
  sk.capacity = CapacitySpec::fixed(2);
  sk.group_fill = GroupFill::neg_inf;
  cases.push_back({"sigmoid, kept, capacity, neg-inf fill", sk});
  TopKOptions one = base;
  one.k = 1;
  one.capacity = CapacitySpec::fixed(1);  // Switch, capacity 1
  cases.push_back({"k = 1, capacity 1", one});
  // every activation, each with a few of the cases (plain for relu, gated otherwise)
  const Activation acts[] = {Activation::relu, Activation::gelu, Activation::gelu_tanh, Activation::silu};
  for (std::size_t i = 0; i < cases.size(); ++i)
    for (std::size_t j : {i % 4, (i + 2) % 4}) {
      const Activation act = acts[j];
      const auto& c = cases[i];
      INFO(c.name << ", " << to_string(act));
      Layer L(5, 4, 6, act != Activation::relu, act == Activation::gelu, false, false, 13);
      MoEOptions o;
      o.router = c.o;
      o.activation = act;
      check_gradients(L, o, inputs(2, 5, 5), {0.3, 0.05});
    }
}

TEST_CASE("backward: expert choice, with the z loss", "[backward]") {
  Layer L(4, 5, 3, true, true, false, false, 14);
  ExpertChoiceOptions e;
  e.capacity = CapacitySpec::fixed(3);
  MoEOptions o;
  o.router = e;
  o.activation = Activation::silu;
  check_gradients(L, o, inputs(2, 6, 4), {0.0, 0.2});
}

TEST_CASE("backward: shared experts (plain, gated, with Qwen2-MoE's gate) and dropout", "[backward]") {
  for (bool gated : {false, true})
    for (bool gate : {false, true}) {
      INFO((gated ? "gated" : "plain") << (gate ? ", gate" : ""));
      Layer L(4, 3, 4, gated, true, true, gate, 15);
      TopKOptions k;
      k.normalize = TopKNormalize::topk;
      MoEOptions o;
      o.router = k;
      o.activation = Activation::silu;
      check_gradients(L, o, inputs(1, 6, 4), {0.1, 0.01});
    }
  Layer L(4, 6, 4, false, true, false, false, 16);
  MoEOptions o;
  o.dropout = 0.3;
  o.dropout_seed = 42;
  check_gradients(L, o, inputs(2, 5, 4), {0.2, 0.0}, {}, false);  // (the dense oracle: another dropout counter)
}

TEST_CASE("backward: ungrouped and transposed inputs get their gradient in their own shape", "[backward]") {
  Layer L(4, 3, 4, false, false, false, false, 17);
  MoEOptions o;
  o.max_group_size = 4;
  const Tensor<double> flat = Rng(3).normal<double>(Shape{{"batch", 2}, {"length", 5}, {"model", 4}});
  check_gradients(L, o, flat, {0.5, 0.0});
  const Tensor<double> t = transpose(inputs(2, 5, 4), Names({"model", "batch", "group"}));
  check_gradients(L, o, t, {0.5, 0.0});
}

TEST_CASE("backward: gradients in the weights' own dim order", "[backward]") {
  Layer L(4, 3, 4, false, false, false, false, 18);
  const Tensor<double> wi_t = transpose(L.w.experts.wi, Names({"hidden", "experts", "model"}));
  L.w.experts.wi = wi_t;
  MoEOptions o;
  o.trainable = true;
  const MoELayer<double> layer(L.w, o);
  MoETape<double> tape;
  const Tensor<double> x = inputs(2, 5, 4);
  layer.forward_train(x, tape);
  const auto g = layer.backward(tape, Rng(1).normal<double>(x.shape()));
  CHECK(g.experts.wi.shape() == wi_t.shape());
  CHECK(g.wg.shape() == L.w.wg.shape());
  o.trainable = false;
  check_gradients(L, o, x, {0.2, 0.0});
}

TEST_CASE("backward: every gradient bitwise the same on 1 to 4 threads", "[backward][threads]") {
  Layer L(16, 24, 8, true, true, true, true, 19);
  for (int r = 0; r < 3; ++r) {
    MoEOptions o;
    o.trainable = true;
    o.activation = Activation::silu;
    if (r == 1) o.router = TopKOptions{};
    if (r == 2) o.router = ExpertChoiceOptions{};
    const MoELayer<double> layer(L.w, o);
    const Tensor<double> x = inputs(3, 40, 16);
    const Tensor<double> dy = Rng(2).normal<double>(x.shape());
    std::optional<MoEGradients<double>> first;
    for (int threads = 1; threads <= 4; ++threads) {
      set_num_threads(threads);
      MoETape<double> tape;
      layer.forward_train(x, tape);
      MoEGradients<double> g = layer.backward(tape, dy, {0.1, 0.01});
      if (!first) {
        first = std::move(g);
        continue;
      }
      INFO(threads << " threads, router " << r);
      CHECK(check::bitwise_equal(g.inputs, first->inputs));
      CHECK(check::bitwise_equal(g.wg, first->wg));
      CHECK(check::bitwise_equal(g.experts.wi, first->experts.wi));
      CHECK(check::bitwise_equal(g.experts.wo, first->experts.wo));
      CHECK(check::bitwise_equal(*g.experts.wi_gate, first->experts.wi_gate.value()));
      CHECK(check::bitwise_equal(*g.experts.bi, first->experts.bi.value()));
      CHECK(check::bitwise_equal(*g.experts.bo, first->experts.bo.value()));
      CHECK(check::bitwise_equal(g.shared->wi, first->shared->wi));
      CHECK(check::bitwise_equal(*g.shared->gate, *first->shared->gate));
    }
  }
  set_num_threads(1);
}

TEST_CASE("backward: accumulating over two micro-batches adds the gradients", "[backward]") {
  Layer L(4, 3, 4, true, true, true, true, 20);
  MoEOptions o;
  o.trainable = true;
  const MoELayer<double> layer(L.w, o);
  const Tensor<double> x1 = inputs(1, 6, 4, 1), x2 = inputs(1, 6, 4, 2);
  const Tensor<double> dy = Rng(3).normal<double>(x1.shape());
  MoETape<double> t1, t2;
  layer.forward_train(x1, t1);
  layer.forward_train(x2, t2);
  const auto g1 = layer.backward(t1, dy, {0.1, 0.0});
  const auto g2 = layer.backward(t2, dy, {0.1, 0.0});
  layer.forward_train(x1, t1);
  layer.forward_train(x2, t2);
  MoEGradients<double> acc;
  layer.backward_into(acc, t1, dy, {0.1, 0.0});
  layer.backward_into(acc, t2, dy, {0.1, 0.0}, Accumulate::add);
  for (index_t i = 0; i < acc.experts.wi.size(); ++i) CHECK(acc.experts.wi[i] == g1.experts.wi[i] + g2.experts.wi[i]);
  for (index_t i = 0; i < acc.wg.size(); ++i) CHECK(acc.wg[i] == g1.wg[i] + g2.wg[i]);
  for (index_t i = 0; i < acc.shared->gate->size(); ++i)
    CHECK((*acc.shared->gate)[i] == (*g1.shared->gate)[i] + (*g2.shared->gate)[i]);
  CHECK(acc.inputs.shape() == x2.shape());  // the inputs' gradient is the last batch's
  for (index_t i = 0; i < acc.inputs.size(); ++i) CHECK(acc.inputs[i] == g2.inputs[i]);
}

TEST_CASE("backward: bad input is a typed error", "[backward][errors]") {
  Layer L(4, 3, 4, false, false, false, false, 21);
  MoEOptions o;
  const MoELayer<double> inference(L.w, o);
  MoETape<double> tape;
  const Tensor<double> x = inputs(1, 6, 4);
  CHECK_THROWS_AS(inference.forward_train(x, tape), value_error);  // built without trainable
  o.trainable = true;
  const MoELayer<double> layer(L.w, o), other(L.w, o);
  const Tensor<double> dy = Rng(3).normal<double>(x.shape());
  CHECK_THROWS_AS(layer.backward(tape, dy), value_error);  // no forward_train yet
  layer.forward_train(x, tape);
  CHECK(tape.ready());
  CHECK(tape.bytes() > 0);
  CHECK_THROWS_AS(other.backward(tape, dy), value_error);  // another layer's tape
  CHECK_THROWS_AS(layer.backward(tape, Rng(3).normal<double>(Shape{{"batch", 1}, {"group", 5}, {"model", 4}})),
                  shape_error);
  Tensor<double> bad = dy.copy();
  bad[3] = std::nan("");
  CHECK_THROWS_AS(layer.backward(tape, bad), value_error);
  bad[3] = INFINITY;
  CHECK_THROWS_AS(layer.backward(tape, bad), value_error);
  CHECK_THROWS_AS(layer.backward(tape, dy, {std::nan(""), 0.0}), value_error);
  CHECK(tape.ready());  // a rejected call leaves the tape usable
  layer.backward(tape, dy);
  CHECK_FALSE(tape.ready());
  CHECK_THROWS_AS(layer.backward(tape, dy), value_error);  // used twice
  MoEGradients<double> g;
  layer.forward_train(x, tape);
  CHECK_THROWS_AS(layer.backward_into(g, tape, dy, {}, Accumulate::add), shape_error);  // nothing to add to
  // int8 experts are inference-only; the dense oracle has no backward pass
  MoEOptions q = o;
  q.precision = Precision::int8;
  CHECK_THROWS_AS(MoELayer<float>(L.w, q), value_error);
  MoEOptions d = o;
  d.dense = true;
  CHECK_THROWS_AS(MoELayer<double>(L.w, d), value_error);
}

namespace {
/// One case of scripts/reference_backward.py (PyTorch autograd of the
/// sources' formulations): the layer's options, weights and inputs, then
/// its outputs, losses and every gradient against the fixture's.
template <class T>
void check_fixture(const fixtures::Case& c) {
  const std::string kind = c.config.at("kind");
  const double tol = std::is_same<T, double>::value ? 1e-10 : 1e-5;
  MoEOptions o;
  o.trainable = true;
  o.activation = parse_activation(c.config.at("activation"));
  if (kind == "gshard") {
    Top2Options t;
    t.capacity = CapacitySpec::fixed(c.integer("capacity"));
    t.normalize = c.config.at("normalize") == "after" ? Normalize::after : Normalize::before;
    t.policy = parse_second_policy(c.config.at("policy"));
    t.threshold = std::stod(c.config.at("threshold"));
    t.second_place_loss = c.integer("second_place_loss") != 0;
    o.router = t;
  } else if (kind == "flaxformer" && c.config.at("router") == "expert-choice") {
    ExpertChoiceOptions e;
    e.capacity = CapacitySpec::fixed(c.integer("capacity"));
    o.router = e;
  } else {
    TopKOptions k;
    k.k = c.integer("k");
    if (kind == "flaxformer") {
      k.capacity = CapacitySpec::fixed(c.integer("capacity"));
      k.priority = parse_priority(c.config.at("priority"));
    } else {
      k.score = parse_score(c.config.at("score"));
      k.normalize = parse_topk_normalize(c.config.at("normalize"));
      if (c.config.count("groups")) {
        k.expert_groups = c.integer("groups");
        k.topk_expert_groups = c.integer("topk_groups");
        k.scale = std::stod(c.config.at("scale"));
        const Tensor<T> b = c.load<T>("bias", {"experts"});
        k.bias.assign(b.begin(), b.end());
      }
    }
    o.router = k;
  }
  const bool hf = kind == "hf";
  Tensor<T> x = c.load<T>(
      "x", hf ? std::vector<std::string>{"group", "model"} : std::vector<std::string>{"batch", "group", "model"});
  Tensor<T> dy = c.load<T>(
      "dy", hf ? std::vector<std::string>{"group", "model"} : std::vector<std::string>{"batch", "group", "model"});
  if (hf) {
    const Shape s{{"batch", 1}, x.dim("group"), x.dim("model")};
    x.set_shape(s), dy.set_shape(s);
  }
  std::vector<Tensor<T>> hold;
  hold.reserve(16);
  auto w = [&](const std::string& n, std::vector<std::string> names) {
    hold.push_back(c.load<T>(n, names));
    return TensorView<const T>(hold.back());
  };
  MoEWeights<T> W;
  W.wg = w("wg", {"model", "experts"});
  W.experts.wi = w("wi", {"experts", "model", "hidden"});
  W.experts.wo = w("wo", {"experts", "hidden", "model"});
  if (c.has("wi_gate")) W.experts.wi_gate = w("wi_gate", {"experts", "model", "hidden"});
  if (c.has("bi")) W.experts.bi = w("bi", {"experts", "hidden"});
  if (c.has("bo")) W.experts.bo = w("bo", {"experts", "model"});
  if (c.has("shared_wi")) {
    SharedExpertWeights<T> s{w("shared_wi", {"model", "hidden"}), w("shared_wo", {"hidden", "model"}), std::nullopt,
                             std::nullopt};
    if (c.has("shared_wi_gate")) s.wi_gate = w("shared_wi_gate", {"model", "hidden"});
    if (c.has("shared_gate")) s.gate = w("shared_gate", {"model"});
    W.shared = s;
  }
  GatingInputs<T> in;
  Tensor<T> imp;
  if (c.has("importance")) {
    imp = c.load<T>("importance", {"batch", "group"});
    in.importance = TensorView<const T>(imp);
  }
  const MoELayer<T> layer(W, o);
  MoETape<T> tape;
  const MoEResult<T> out = layer.forward_train(x, tape, in);
  auto same = [&](const Tensor<T>& got, const std::string& n) {
    INFO(n);
    Tensor<T> want = c.load<T>(n, got.shape().names());
    CHECK(naive::all_close(got, want, tol, tol));
  };
  Tensor<T> y = out.outputs.copy();
  if (hf) y.set_shape(Shape{y.dim("group"), y.dim("model")});
  same(y, "outputs");
  CHECK(naive::close(out.aux_loss, c.load<T>("aux_loss", {}).item(), tol, tol));
  if (!std::holds_alternative<Top2Options>(o.router))
    CHECK(naive::close(out.z_loss, c.load<T>("z_loss", {}).item(), tol, tol));
  const LossCoefficients coef{std::stod(c.config.at("aux_coef")), std::stod(c.config.at("z_coef"))};
  const MoEGradients<T> g = layer.backward(tape, dy, coef);
  Tensor<T> gx = g.inputs.copy();
  if (hf) gx.set_shape(Shape{gx.dim("group"), gx.dim("model")});
  same(gx, "grad_inputs");
  same(g.wg, "grad_wg");
  same(g.experts.wi, "grad_wi");
  same(g.experts.wo, "grad_wo");
  if (c.has("wi_gate")) same(*g.experts.wi_gate, "grad_wi_gate");
  if (c.has("bi")) same(*g.experts.bi, "grad_bi");
  if (c.has("bo")) same(*g.experts.bo, "grad_bo");
  if (c.has("shared_wi")) {
    same(g.shared->wi, "grad_shared_wi");
    same(g.shared->wo, "grad_shared_wo");
    same(*g.shared->wi_gate, "grad_shared_wi_gate");
    if (c.has("shared_gate")) same(*g.shared->gate, "grad_shared_gate");
  }
}
}  // namespace

TEST_CASE("backward: PyTorch autograd of the sources (GShard, flaxformer, Hugging Face blocks)",
          "[backward][fixtures]") {
  std::vector<fixtures::Case> all;
  for (const char* kind : {"gshard", "flaxformer", "hf"})
    for (auto& c : fixtures::cases(kind, "backward")) all.push_back(c);
  REQUIRE(all.size() == 18);
  for (const auto& c : all) {
    INFO(c.name);
    if (c.f64) check_fixture<double>(c);
    else check_fixture<float>(c);
  }
}

TEST_CASE("backward: recomputing the first GEMMs gives the same bits from a smaller tape", "[backward]") {
  Layer L(8, 12, 4, true, true, true, true, 22);
  const Tensor<double> x = inputs(2, 150, 8);  // experts with more rows than one block of the training forward
  const Tensor<double> dy = Rng(4).normal<double>(x.shape());
  MoEOptions o;
  o.trainable = true;
  o.activation = Activation::gelu;
  o.dropout = 0.2;
  o.router = TopKOptions{};
  std::size_t bytes[2];
  std::optional<MoEGradients<double>> g[2];
  for (int r = 0; r < 2; ++r) {
    o.recompute_hidden = r == 1;
    const MoELayer<double> layer(L.w, o);
    MoETape<double> tape;
    layer.forward_train(x, tape);
    bytes[r] = tape.bytes();
    g[r] = layer.backward(tape, dy, {0.1, 0.1});
  }
  CHECK(bytes[1] < bytes[0]);
  // kept: per routed row 2 x 12 pre-activations, per token 2 x 13 for the shared expert
  CHECK(bytes[0] - bytes[1] == (2 * 300 * 2 * 12 + 300 * 2 * 13) * sizeof(double));
  CHECK(check::bitwise_equal(g[0]->inputs, g[1]->inputs));
  CHECK(check::bitwise_equal(g[0]->experts.wi, g[1]->experts.wi));
  CHECK(check::bitwise_equal(*g[0]->experts.wi_gate, *g[1]->experts.wi_gate));
  CHECK(check::bitwise_equal(g[0]->experts.wo, g[1]->experts.wo));
  CHECK(check::bitwise_equal(g[0]->wg, g[1]->wg));
  CHECK(check::bitwise_equal(g[0]->shared->wi, g[1]->shared->wi));
  CHECK(check::bitwise_equal(*g[0]->shared->gate, *g[1]->shared->gate));
}

namespace {
/// |a - b| / max |b| over every element.
template <class T>
double relative_difference(const Tensor<T>& a, const Tensor<T>& b) {
  double diff = 0.0, scale = 0.0;
  for (index_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}
}  // namespace

TEST_CASE("backward: bf16 precision, GEMM inputs in bf16, close to fp32, deterministic", "[backward][bf16]") {
  // float weights of a layer with a gated shared expert
  Layer L(32, 48, 8, true, true, true, true, 23);
  std::vector<Tensor<float>> hold;
  auto f = [&](const TensorView<const double>& v) {
    hold.push_back(cast<float>(v));
    return TensorView<const float>(hold.back());
  };
  hold.reserve(16);
  MoEWeights<float> w;
  w.wg = f(L.w.wg), w.experts.wi = f(L.w.experts.wi), w.experts.wo = f(L.w.experts.wo);
  w.experts.wi_gate = f(*L.w.experts.wi_gate), w.experts.bi = f(*L.w.experts.bi), w.experts.bo = f(*L.w.experts.bo);
  w.experts.bi_gate = f(*L.w.experts.bi_gate);
  w.shared =
      SharedExpertWeights<float>{f(L.w.shared->wi), f(L.w.shared->wo), f(*L.w.shared->wi_gate), f(*L.w.shared->gate)};
  const Tensor<float> x = cast<float>(inputs(2, 64, 32));
  const Tensor<float> dy = cast<float>(Rng(6).normal<double>(x.shape()));
  MoEOptions o;
  o.router = TopKOptions{};
  o.activation = Activation::silu;
  o.trainable = true;
  const MoELayer<float> fp32(w, o);
  o.precision = Precision::bf16;
  const MoELayer<float> bf16(w, o);
  MoETape<float> t32, t16;
  const auto y32 = fp32.forward_train(x, t32);
  const auto y16 = bf16.forward_train(x, t16);
  // the training forward computes what the bf16 inference forward does
  o.trainable = false;
  for (Backend b : {Backend::eigen, Backend::automatic}) {
    o.backend = b;
    const auto inf = MoELayer<float>(w, o).forward(x);
    CHECK(relative_difference(y16.outputs, inf.outputs) < 1e-5);
  }
  CHECK(relative_difference(y16.outputs, y32.outputs) > 1e-5);  // (it is bf16)
  const auto g32 = fp32.backward(t32, dy, {0.1, 0.01});
  const auto g16 = bf16.backward(t16, dy, {0.1, 0.01});
  CHECK(relative_difference(g16.inputs, g32.inputs) < 3e-2);
  CHECK(relative_difference(g16.experts.wi, g32.experts.wi) < 3e-2);
  CHECK(relative_difference(*g16.experts.wi_gate, *g32.experts.wi_gate) < 3e-2);
  CHECK(relative_difference(g16.experts.wo, g32.experts.wo) < 3e-2);
  CHECK(relative_difference(*g16.experts.bi, *g32.experts.bi) < 3e-2);
  CHECK(relative_difference(g16.wg, g32.wg) < 3e-2);
  CHECK(relative_difference(g16.shared->wi, g32.shared->wi) < 3e-2);
  CHECK(relative_difference(*g16.shared->gate, *g32.shared->gate) < 3e-2);
  CHECK(relative_difference(g16.experts.wi, g32.experts.wi) > 1e-6);
  for (int threads = 2; threads <= 3; ++threads) {
    set_num_threads(threads);
    MoETape<float> t;
    bf16.forward_train(x, t);
    const auto g = bf16.backward(t, dy, {0.1, 0.01});
    INFO(threads << " threads");
    CHECK(check::bitwise_equal(g.inputs, g16.inputs));
    CHECK(check::bitwise_equal(g.experts.wi, g16.experts.wi));
    CHECK(check::bitwise_equal(g.shared->wi, g16.shared->wi));
  }
  set_num_threads(1);
}
