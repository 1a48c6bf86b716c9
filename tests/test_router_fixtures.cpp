// Today's routers and MoE blocks against scripts/reference_routers.py's
// numpy transcriptions of flaxformer, DeepSpeed and Hugging Face
// (tests/fixtures/routers/): 1e-12 in float64, 1e-5 in float32.
#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {

template <class T>
TopKOptions topk_options_of(const fixtures::Case& c, index_t E) {
  TopKOptions o;
  o.k = c.integer("k");
  o.score = parse_score(c.config.at("score"));
  if (c.config.count("normalize")) o.normalize = parse_topk_normalize(c.config.at("normalize"));
  if (c.config.count("priority")) o.priority = parse_priority(c.config.at("priority"));
  if (c.config.count("capacity")) o.capacity = CapacitySpec::fixed(c.integer("capacity"));
  if (c.config.count("scale")) o.scale = std::stod(c.config.at("scale"));
  if (c.config.count("groups")) o.expert_groups = c.integer("groups"), o.topk_expert_groups = c.integer("topk_groups");
  if (c.config.count("group_fill")) o.group_fill = parse_group_fill(c.config.at("group_fill"));
  if (c.has("bias")) {
    const auto b = c.load<T>("bias", {"experts"});
    REQUIRE(b.size() == E);
    for (T v : b) o.bias.push_back(static_cast<double>(v));
  }
  return o;
}

/// combine and slot [G, S, E] from a plan, as `einmoe route` writes them.
template <class T>
void plan_tables(const RoutingPlan<T>& p, Tensor<T>& combine, Tensor<std::int64_t>& slot) {
  const index_t E = p.experts.size;
  const Shape s{{"batch", p.groups()}, {"group", p.group.size}, {"experts", E}};
  combine = Tensor<T>(s);
  slot = Tensor<std::int64_t>(s, std::int64_t{-1});
  for (index_t t = 0; t < p.tokens(); ++t)
    for (index_t j = 0; j < p.k; ++j) {
      const auto i = static_cast<std::size_t>(t * p.k + j);
      if (p.expert[i] < 0 || p.slot[i] < 0) continue;
      combine[t * E + p.expert[i]] = p.weight[i];
      slot[t * E + p.expert[i]] = p.slot[i];
    }
}

/// The same from the dense [G, S, E, C] tensors.
template <class T>
void dense_tables(const DenseRouterResult<T>& d, Tensor<T>& combine, Tensor<std::int64_t>& slot) {
  const Shape& ds = d.combine.shape();
  const index_t E = ds[2].size, C = ds[3].size;
  const Shape s{{"batch", ds[0].size}, {"group", ds[1].size}, {"experts", E}};
  combine = Tensor<T>(s);
  slot = Tensor<std::int64_t>(s, std::int64_t{-1});
  for (index_t te = 0; te < s.num_elements(); ++te)
    for (index_t c = 0; c < C; ++c)
      if (d.dispatch[te * C + c] != T(0)) combine[te] = d.combine[te * C + c], slot[te] = c;
}

template <class T>
void check_route_case(const fixtures::Case& c) {
  const double tol = std::is_same<T, double>::value ? 1e-12 : 1e-5;
  const auto logits = c.load<T>("logits", {"batch", "group", "experts"});
  const index_t E = logits.size_of("experts");
  const auto want_combine = c.load<T>("combine", {"batch", "group", "experts"});
  const bool has_slot = c.has("slot");
  RouterResult<T> r;
  DenseRouterResult<T> d;
  if (c.config.at("router") == "expert-choice") {
    ExpertChoiceOptions o;
    o.capacity = CapacitySpec::fixed(c.integer("capacity"));
    r = expert_choice_routing(logits, o);
    d = expert_choice_routing_dense(logits, o);
  } else {
    const TopKOptions o = topk_options_of<T>(c, E);
    r = topk_routing(logits, o);
    d = topk_routing_dense(logits, o);
  }
  Tensor<T> combine, dcombine;
  Tensor<std::int64_t> slot, dslot;
  plan_tables(r.plan, combine, slot);
  dense_tables(d, dcombine, dslot);
  CHECK(naive::all_close(combine, want_combine, tol, tol));
  CHECK(naive::all_close(dcombine, want_combine, tol, tol));
  if (has_slot) {
    const auto want_slot = load_npy<std::int64_t>(c.path("slot"), {"batch", "group", "experts"});
    CHECK(slot.to_vector() == want_slot.to_vector());
    CHECK(dslot.to_vector() == want_slot.to_vector());
  } else {
    // dropless: routed exactly where the reference has a weight
    for (index_t i = 0; i < slot.size(); ++i) CHECK((slot[i] >= 0) == (want_combine[i] != T(0)));
  }
  if (c.has("aux_loss")) {
    const double want = load_npy<double>(c.path("aux_loss"), {}).item();
    CHECK(naive::close(static_cast<double>(r.aux_loss), want, tol, tol));
    CHECK(naive::close(static_cast<double>(d.aux_loss), want, tol, tol));
  }
  if (c.has("z_loss")) {
    const double want = load_npy<double>(c.path("z_loss"), {}).item();
    CHECK(naive::close(static_cast<double>(r.z_loss), want, tol, tol));
    CHECK(naive::close(static_cast<double>(d.z_loss), want, tol, tol));
  }
  if (c.has("deepspeed_l_aux")) {
    // DeepSpeed's l_aux is per group and divided by k
    const auto per_group = load_npy<double>(c.path("deepspeed_l_aux"), {"batch"});
    double mean = 0;
    for (double v : per_group) mean += v / static_cast<double>(per_group.size());
    CHECK(naive::close(static_cast<double>(r.aux_loss) / static_cast<double>(c.integer("k")), mean, tol, tol));
    // and its capacity rule
    CHECK(capacity_from_factor(CapacityRule::deepspeed, logits.size_of("group"), E, c.integer("k"),
                               std::stod(c.config.at("capacity_factor")),
                               c.integer("min_capacity")) == c.integer("capacity"));
  }
}

template <class T>
void check_block_case(const fixtures::Case& c) {
  const double tol = std::is_same<T, double>::value ? 1e-12 : 1e-5;
  // The HF weights in their own layouts ([out, in] per Linear), labelled by
  // name: no transposes needed.
  const auto x = c.load<T>("x", {"group", "model"});
  MoEWeights<T> w;
  w.wg = shared_view(c.load<T>("gate", {"experts", "model"}));
  w.experts.wi_gate = shared_view(c.load<T>("w1", {"experts", "hidden", "model"}));
  w.experts.wi = shared_view(c.load<T>("w3", {"experts", "hidden", "model"}));
  w.experts.wo = shared_view(c.load<T>("w2", {"experts", "model", "hidden"}));
  if (c.has("shared_up_proj")) {
    SharedExpertWeights<T> s;
    s.wi_gate = shared_view(c.load<T>("shared_gate_proj", {"hidden", "model"}));
    s.wi = shared_view(c.load<T>("shared_up_proj", {"hidden", "model"}));
    s.wo = shared_view(c.load<T>("shared_down_proj", {"model", "hidden"}));
    if (c.has("shared_expert_gate")) {
      Tensor<T> g = c.load<T>("shared_expert_gate", {"one", "model"});
      g.set_shape(Shape{g.dim("model")});
      s.gate = shared_view(std::move(g));
    }
    w.shared = std::move(s);
  }
  MoEOptions o;
  o.router = TopKOptions{};
  o.router = topk_options_of<T>(c, w.wg.size_of("experts"));
  o.activation = parse_activation(c.config.at("act"));
  const MoELayer<T> layer(w, o);
  const auto want = c.load<T>("outputs", {"group", "model"});
  CHECK(naive::all_close(layer.forward(x).outputs, want, tol, tol));
  CHECK(naive::all_close(layer.router_logits(x), c.load<T>("router_logits", {"group", "experts"}), tol, tol));
  o.dense = true;
  CHECK(naive::all_close(moe_forward(x, w, o).outputs, want, tol, tol));
}

}  // namespace

TEST_CASE("routers reproduce flaxformer, DeepSpeed and Hugging Face (numpy transcriptions)", "[routers][fixtures]") {
  const auto cs = fixtures::cases("route", "routers");
  REQUIRE(cs.size() >= 30);
  for (const auto& c : cs) {
    INFO(c.name << " (" << c.config.at("source") << ")");
    if (c.f64) check_route_case<double>(c);
    else check_route_case<float>(c);
  }
}

TEST_CASE("MoE blocks reproduce Hugging Face Mixtral, Qwen2-MoE and DeepSeek-V3 (numpy transcriptions)",
          "[moe][routers][fixtures]") {
  const auto cs = fixtures::cases("block", "routers");
  REQUIRE(cs.size() == 6);
  for (const auto& c : cs) {
    INFO(c.name);
    if (c.f64) check_block_case<double>(c);
    else check_block_case<float>(c);
  }
}
