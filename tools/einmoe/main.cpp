// The einmoe command: einmoe's routing and MoE layer on .npy files, so that
// results can be checked against Python frameworks. See `einmoe --help`.
//
// Bad input of any kind prints one line naming the flag or file and exits
// with status 2; outputs are written all together or not at all.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <einmoe/einmoe.hpp>
#if defined(EINMOE_HAS_MPI)
#include <einmoe/parallel/expert_parallel.hpp>
#endif

#include "einmoe/args.hpp"

namespace {

using namespace einmoe;
using cli::Args;
using cli::fail;
using cli::Flag;

const char* kUsage =
    "usage: einmoe <command> [flags]   (einmoe <command> --help for its flags; einmoe --version)\n"
    "commands:\n"
    "  gate            top-2 gating of logits [G,S,E] -> dispatch, combine [G,S,E,C], aux_loss\n"
    "  route           top-k or expert-choice routing of logits [G,S,E] -> combine, slot [G,S,E], losses\n"
    "  truncated-gate  Mesh TF's truncated top-2 gating of gates [G,S,E] -> combine [G,S,E,C]\n"
    "  moe             a whole MoE feed-forward layer on inputs [G,S,M] -> outputs [G,S,M], aux_loss\n"
    "  block           the MoE block of a Hugging Face checkpoint's layer on inputs [T,M] -> outputs, router_logits\n"
    "  mask            attention bias masks (causal, local-block, padding, segment) as float32 .npy\n"
    "  beam            Mesh TF beam search on a bigram model -> ids, scores, steps\n"
    "Arrays are .npy (float32 or float64, C order); outputs keep the type of the main input.\n";

const char* kGateFlags =
    "  --capacity C             slots per expert per group (positive; or --capacity-factor)\n"
    "  --capacity-factor F      instead of --capacity: C = max(min(S, int(S F / E)), 4) (Mesh TF)\n"
    "  --policy P               second expert: all (default) | none | threshold | random | sampling\n"
    "  --threshold T            for threshold and random (default 0.2)\n"
    "  --importance I.npy       [G,S]: 1 -> two experts, (0,1) -> at most one, 0 -> none\n"
    "  --normalize before|after renormalize gates before capacity (Mesh TF, default) or after (lingvo)\n"
    "  --second-place-loss      add Mesh TF's second-place balancing loss\n"
    "  --uniform U.npy          [G,S] uniforms for policy random (default: drawn from --seed)\n"
    "  --gumbel N.npy           [G,S,E] Gumbel draws for policy sampling (default: drawn from --seed)\n"
    "  --seed N                 seed for draws not given as files (default 0)\n"
    "  --ties lowest|highest    which expert wins a tie: lowest index (default; lingvo, tf.argmax) or\n"
    "                           highest (Mesh TF's top_1 before Sept. 2019)\n";

const char* kCommonFlags =
    "  --dense                  use the dense one-hot formulation (the oracle) instead of the sparse plan\n"
    "  --threads N              threads (default: all cores)\n"
    "  --out DIR                output directory (required; created if missing)\n"
    "  --help                   this text\n";

const char* kExchangeFlags =
    "  --exchange X             with --expert-parallel, how rows travel: rows (MPI_Alltoallv of the routed\n"
    "                           rows, default) | padded (MPI_Alltoall of equal capacity blocks, GShard) |\n"
    "                           hierarchical (inside each node, then across nodes; Tutel's 2DH)\n"
    "  --ranks-per-node N       with --exchange hierarchical: ranks [0,N), [N,2N), ... are the nodes\n"
    "                           (default: the ranks that share memory)\n";

std::vector<Flag> gate_flags() {
  return {{"--capacity", true},
          {"--capacity-factor", true},
          {"--policy", true},
          {"--threshold", true},
          {"--importance", true},
          {"--normalize", true},
          {"--second-place-loss", false},
          {"--uniform", true},
          {"--gumbel", true},
          {"--seed", true},
          {"--ties", true},
          {"--dense", false},
          {"--threads", true},
          {"--out", true},
          {"--help", false}};
}

const char* kRouterFlags =
    "  --router R               topk | expert-choice\n"
    "  --k K                    topk: choices per token (default 2)\n"
    "  --score S                topk: softmax (default) | sigmoid\n"
    "  --bias B.npy             topk: [E] selection bias (selection only, not the weights)\n"
    "  --groups N --topk-groups M  topk: N expert groups, the best M eligible (DeepSeek-V3)\n"
    "  --group-fill F           topk with --groups: what experts of the groups left out score: zero\n"
    "                           (default, Hugging Face) | neg-inf (DeepSeek's inference code)\n"
    "  --normalize N            topk: none (default) | topk | kept\n"
    "  --scale F                topk: multiplies every weight (default 1)\n"
    "  --capacity C             slots per expert per group (topk: optional, none = dropless;\n"
    "                           expert-choice: required, tokens per expert per group)\n"
    "  --priority P             topk: slot order choice (default) | bpr | token\n";

const std::vector<std::string> kTopkOnly{"--k",           "--score",      "--bias",  "--groups",
                                         "--topk-groups", "--group-fill", "--scale", "--priority"};
const std::vector<std::string> kTop2Only{
    "--capacity-factor", "--policy", "--threshold", "--second-place-loss", "--importance", "--uniform",
    "--gumbel",          "--seed",   "--ties"};

std::vector<Flag> router_flags() {
  std::vector<Flag> f{{"--router", true}, {"--normalize", true}, {"--capacity", true}};
  for (const auto& n : kTopkOnly) f.push_back({n, true});
  return f;
}

/// The default options of --router (topk or expert-choice).
RouterOptions router_kind(const Args& a) {
  const std::string r = a.get("--router");
  if (r == "topk") return TopKOptions{};
  if (r == "expert-choice") return ExpertChoiceOptions{};
  fail("--router: unknown router \"", r, "\" (topk, expert-choice)");
}

/// The options of --router topk / expert-choice for E experts; flags of the
/// other router (or of top-2 gating) are an error naming the flag.
template <class T>
void router_options(const Args& a, RouterOptions kind, index_t E, MoEOptions& o) {
  for (const auto& f : kTop2Only)
    if (a.has(f)) fail(f, ": belongs to top-2 gating (without --router), not --router ", a.get("--router"));
  o.router = kind;
  if (auto* ec = std::get_if<ExpertChoiceOptions>(&o.router)) {
    for (const auto& f : kTopkOnly)
      if (a.has(f)) fail(f, ": belongs to --router topk, not expert-choice");
    if (a.has("--normalize")) fail("--normalize: belongs to --router topk, not expert-choice");
    if (!a.has("--capacity")) fail("--capacity: required by --router expert-choice");
    ec->capacity = CapacitySpec::fixed(a.required_integer("--capacity", 1));
    return;
  }
  TopKOptions& t = std::get<TopKOptions>(o.router);
  t.k = a.integer("--k", 1, 2);
  if (t.k > E) fail("--k: ", t.k, " exceeds the ", E, " experts");
  const std::string sc = a.get_or("--score", "softmax");
  if (sc == "softmax") t.score = Score::softmax;
  else if (sc == "sigmoid") t.score = Score::sigmoid;
  else fail("--score: unknown score \"", sc, "\" (softmax, sigmoid)");
  try {
    t.normalize = parse_topk_normalize(a.get_or("--normalize", "none"));
  } catch (const einmoe::error&) {
    fail("--normalize: unknown normalization \"", a.get("--normalize"), "\" (none, topk, kept)");
  }
  try {
    t.priority = parse_priority(a.get_or("--priority", "choice"));
  } catch (const einmoe::error&) {
    fail("--priority: unknown priority \"", a.get("--priority"), "\" (choice, bpr, token)");
  }
  t.scale = a.real("--scale", 1.0);
  if (!std::isfinite(t.scale)) fail("--scale: ", t.scale, " is not finite");
  if (a.has("--groups") != a.has("--topk-groups"))
    fail(a.has("--groups") ? "--groups" : "--topk-groups", ": give --groups and --topk-groups together");
  if (a.has("--group-fill") && !a.has("--groups")) fail("--group-fill: needs --groups and --topk-groups");
  if (a.has("--groups")) {
    t.expert_groups = a.integer("--groups", 1, 1);
    t.topk_expert_groups = a.integer("--topk-groups", 1, 1);
    if (E % t.expert_groups != 0) fail("--groups: ", t.expert_groups, " does not divide the ", E, " experts");
    if (t.topk_expert_groups > t.expert_groups)
      fail("--topk-groups: ", t.topk_expert_groups, " exceeds --groups ", t.expert_groups);
    if (t.topk_expert_groups * (E / t.expert_groups) < t.k)
      fail("--topk-groups: ", t.topk_expert_groups, " groups of ", E / t.expert_groups, " experts hold fewer than --k ",
           t.k);
    try {
      t.group_fill = parse_group_fill(a.get_or("--group-fill", "zero"));
    } catch (const einmoe::error&) {
      fail("--group-fill: unknown group fill \"", a.get("--group-fill"), "\" (zero, neg-inf)");
    }
  }
  if (a.has("--bias")) {
    const auto b = cli::load_float<T>("--bias", a.get("--bias"), {"experts"});
    cli::expect_shape(b, Shape{{"experts", E}}, "--bias", a.get("--bias"));
    cli::expect_finite(b, "--bias", a.get("--bias"));
    for (T v : b) t.bias.push_back(static_cast<double>(v));
  }
  if (a.has("--capacity")) t.capacity = CapacitySpec::fixed(a.required_integer("--capacity", 1));
}

/// The expert-choice capacity given by --capacity, when it is the router.
index_t expert_choice_capacity_of(const MoEOptions& o) {
  const auto* ec = std::get_if<ExpertChoiceOptions>(&o.router);
  return ec ? ec->capacity.size : 0;
}

/// Router logits may hold -inf (an expert masked out); NaN and +inf are errors.
template <class T>
void expect_logits(const Tensor<T>& t, const std::string& flag, const std::string& path) {
  const index_t E = t.shape()[t.rank() - 1].size;
  for (index_t i = 0; i < t.size(); ++i) {
    const double v = static_cast<double>(t[i]);
    if (std::isnan(v) || v == std::numeric_limits<double>::infinity())
      fail(flag, " ", path, ": element ", i, " is ", v, " (logits may be -inf, not NaN or +inf)");
  }
  for (index_t r = 0; E > 0 && r < t.size() / E; ++r) {
    bool any = false;
    for (index_t e = 0; e < E; ++e) any = any || std::isfinite(static_cast<double>(t[r * E + e]));
    if (!any) fail(flag, " ", path, ": token ", r, " has only -inf logits");
  }
}

template <class T>
void run_route(const Args& a) {
  const std::string lp = a.get("--logits");
  const auto logits = cli::load_float<T>("--logits", lp, {"batch", "group", "experts"});
  const index_t E = logits.size_of("experts");
  if (E < 1) fail("--logits ", lp, ": no experts (last axis is 0)");
  expect_logits(logits, "--logits", lp);
  if (!a.has("--router")) fail("--router: required (topk, expert-choice)");
  MoEOptions o;
  router_options<T>(a, router_kind(a), E, o);
  if (expert_choice_capacity_of(o) > logits.size_of("group"))
    fail("--capacity: ", expert_choice_capacity_of(o), " exceeds the group's ", logits.size_of("group"), " tokens");
  const index_t G = logits.size_of("batch"), S = logits.size_of("group");
  Tensor<T> combine(logits.shape());
  Tensor<std::int64_t> slot(logits.shape(), std::int64_t{-1});
  double aux = 0, z = 0;
  if (a.has("--dense")) {
    const auto d = route_dense(logits, o.router, GatingInputs<T>{}, o.dims, RouteCall{});
    const index_t C = d.combine.shape()[3].size;
    for (index_t t = 0; t < G * S; ++t)
      for (index_t e = 0; e < E; ++e)
        for (index_t c = 0; c < C; ++c) {
          const index_t i = (t * E + e) * C + c;
          if (d.dispatch[i] == T(0)) continue;
          combine[t * E + e] = d.combine[i];
          slot[t * E + e] = c;
        }
    aux = static_cast<double>(d.aux_loss), z = static_cast<double>(d.z_loss);
  } else {
    RouterResult<T> r;
    RouterWorkspace<T> ws;
    route_into(r, logits, o.router, GatingInputs<T>{}, o.dims, RouteCall{}, ws);
    const auto& p = r.plan;
    for (index_t t = 0; t < G * S; ++t)
      for (index_t j = 0; j < p.k; ++j) {
        const auto i = static_cast<std::size_t>(t * p.k + j);
        if (p.expert[i] < 0 || p.slot[i] < 0) continue;
        combine[t * E + p.expert[i]] = p.weight[i];
        slot[t * E + p.expert[i]] = p.slot[i];
      }
    aux = static_cast<double>(r.aux_loss), z = static_cast<double>(r.z_loss);
  }
  cli::Outputs out(a);
  out.add("combine.npy", combine);
  out.add("slot.npy", slot);
  out.add("aux_loss.npy", Tensor<double>::scalar(aux));
  out.add("z_loss.npy", Tensor<double>::scalar(z));
  out.commit();
  index_t routed = 0;
  for (auto v : slot) routed += v >= 0 ? 1 : 0;
  std::printf("route (%s%s): aux_loss %.6g, z_loss %.6g, %lld token-expert pairs routed\n", router_name(o.router),
              a.has("--dense") ? ", dense" : "", aux, z, static_cast<long long>(routed));
}

void apply_threads(const Args& a) {
  if (a.has("--threads")) set_num_threads(static_cast<int>(a.integer("--threads", 1, 1, einmoe::max_threads)));
}

Ties parse_ties_flag(const Args& a) {
  const std::string t = a.get_or("--ties", "lowest");
  if (t != "lowest" && t != "highest") fail("--ties: \"", t, "\" is not lowest or highest");
  return parse_ties(t);
}

Top2Options gate_options(const Args& a) {
  Top2Options o;
  if (a.has("--capacity") && a.has("--capacity-factor"))
    fail("--capacity-factor: give --capacity or --capacity-factor, not both");
  if (a.has("--capacity-factor")) {
    const double cf = a.real("--capacity-factor", 1.25);
    if (!(cf > 0)) fail("--capacity-factor: ", cf, " must be positive");
    o.capacity = CapacitySpec::factor(cf);
  } else {
    if (!a.has("--capacity")) fail("missing required flag --capacity (or --capacity-factor)");
    o.capacity = CapacitySpec::fixed(a.required_integer("--capacity", 1));
  }
  try {
    o.policy = parse_second_policy(a.get_or("--policy", "all"));
  } catch (const einmoe::error&) {
    fail("--policy: unknown policy \"", a.get("--policy"), "\" (all, none, threshold, random, sampling)");
  }
  o.threshold = a.real("--threshold", 0.2);
  const std::string n = a.get_or("--normalize", "before");
  if (n == "before") o.normalize = Normalize::before;
  else if (n == "after") o.normalize = Normalize::after;
  else fail("--normalize: \"", n, "\" is not before or after");
  o.second_place_loss = a.has("--second-place-loss");
  o.seed = static_cast<std::uint64_t>(a.integer("--seed", 0, 0));
  o.ties = parse_ties_flag(a);
  return o;
}

/// Loads the optional per-token gating inputs, checked against [G,S](,E).
template <class T>
GatingInputs<T> gate_inputs(const Args& a, const Shape& tokens, const Shape& full) {
  GatingInputs<T> in;
  if (a.has("--importance")) {
    auto t = cli::load_float<T>("--importance", a.get("--importance"), {"batch", "group"});
    cli::expect_shape(t, tokens, "--importance", a.get("--importance"));
    cli::expect_finite(t, "--importance", a.get("--importance"));
    in.importance = shared_view(std::move(t));
  }
  if (a.has("--uniform")) {
    auto t = cli::load_float<T>("--uniform", a.get("--uniform"), {"batch", "group"});
    cli::expect_shape(t, tokens, "--uniform", a.get("--uniform"));
    cli::expect_finite(t, "--uniform", a.get("--uniform"));
    in.uniform = shared_view(std::move(t));
  }
  if (a.has("--gumbel")) {
    auto t = cli::load_float<T>("--gumbel", a.get("--gumbel"), {"batch", "group", "experts"});
    cli::expect_shape(t, full, "--gumbel", a.get("--gumbel"));
    cli::expect_finite(t, "--gumbel", a.get("--gumbel"));
    in.gumbel = shared_view(std::move(t));
  }
  return in;
}

void print_stats(const char* what, const RoutingStats& s, double aux_loss) {
  std::printf("%s: aux_loss %.6g, first choices kept %lld/%lld, second %lld/%lld, fill %.3f\n", what, aux_loss,
              static_cast<long long>(s.first_kept), static_cast<long long>(s.first_wanted),
              static_cast<long long>(s.second_kept), static_cast<long long>(s.second_wanted), s.fill());
}

/// A JSON number (finite; JSON has no NaN or infinity, so those are null).
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
template <class I>
std::string json_list(const std::vector<I>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json_number(static_cast<double>(v[i]));
  return s + "]";
}

/// stats.json of einmoe gate: the options used and the load statistics.
std::string gate_stats_json(const Args& a, const Top2Options& o, const Shape& logits, index_t capacity,
                            const RoutingStats& st, double aux_loss) {
  std::string j = "{\n";
  j += "  \"command\": \"gate\",\n";
  j += "  \"options\": {\"capacity\": " + std::to_string(capacity) + ", \"capacity_factor\": " +
       (a.has("--capacity-factor") ? json_number(o.capacity.capacity_factor) : std::string("null")) +
       ", \"policy\": \"" + to_string(o.policy) + "\", \"threshold\": " + json_number(o.threshold) +
       ", \"normalize\": \"" + (o.normalize == Normalize::before ? "before" : "after") +
       "\", \"second_place_loss\": " + (o.second_place_loss ? "true" : "false") +
       ", \"seed\": " + std::to_string(o.seed) + ", \"ties\": \"" + to_string(o.ties) +
       "\", \"dense\": " + (a.has("--dense") ? "true" : "false") +
       ", \"mtf_v1\": " + (a.has("--mtf-v1") ? "true" : "false") + "},\n";
  j += "  \"groups\": " + std::to_string(logits.size_of("batch")) +
       ", \"group_size\": " + std::to_string(logits.size_of("group")) +
       ", \"experts\": " + std::to_string(logits.size_of("experts")) + ",\n";
  j += "  \"tokens_per_expert\": " + json_list(st.tokens_per_expert) + ",\n";
  j += "  \"first_choices\": " + json_list(st.first_choices) + ",\n";
  j += "  \"first_wanted\": " + std::to_string(st.first_wanted) + ", \"first_kept\": " + std::to_string(st.first_kept) +
       ", \"second_wanted\": " + std::to_string(st.second_wanted) +
       ", \"second_kept\": " + std::to_string(st.second_kept) + ",\n";
  j += "  \"dropped_first\": " + json_number(st.dropped_first()) +
       ", \"dropped_second\": " + json_number(st.dropped_second()) + ", \"fill\": " + json_number(st.fill()) + ",\n";
  j += "  \"aux_loss\": " + json_number(aux_loss) + "\n}\n";
  return j;
}

/// The sparse plan as [G, S, k] arrays: expert and slot (int64, -1 where a
/// choice was not kept) and weight.
template <class T>
void add_plan(cli::Outputs& out, const RoutingPlan<T>& plan) {
  const Shape gsk{{"batch", plan.groups()}, {"group", plan.group.size}, {"choice", plan.k}};
  Tensor<std::int64_t> expert(gsk, uninitialized), slot(gsk, uninitialized);
  Tensor<T> weight(gsk, uninitialized);
  for (index_t i = 0; i < gsk.num_elements(); ++i) {
    expert[i] = plan.expert[static_cast<std::size_t>(i)];
    slot[i] = plan.slot[static_cast<std::size_t>(i)];
    weight[i] = plan.weight[detail::uz(i)];
  }
  out.add("expert.npy", expert);
  out.add("slot.npy", slot);
  out.add("weight.npy", weight);
}

template <class T>
void run_gate(const Args& a) {
  const std::string lp = a.get("--logits");
  const auto logits = cli::load_float<T>("--logits", lp, {"batch", "group", "experts"});
  if (logits.size_of("experts") < 1) fail("--logits ", lp, ": no experts (last axis is 0)");
  expect_logits(logits, "--logits", lp);
  const Top2Options o = gate_options(a);
  const Shape tokens = logits.shape().without({"experts"});
  const bool v1 = a.has("--mtf-v1");
  if (!v1 && a.has("--max-experts")) fail("--max-experts: belongs to --mtf-v1");
  if (v1) {
    for (const char* f : {"--importance", "--gumbel", "--normalize"})
      if (a.has(f)) fail(f, ": not part of --mtf-v1 (its gates are renormalized after capacity; see --max-experts)");
    if (o.policy == SecondPolicy::sampling)
      fail("--policy sampling: not part of --mtf-v1 (all, none, threshold, random)");
  }
  const auto in = gate_inputs<T>(a, tokens, logits.shape());
  std::optional<Tensor<T>> max_experts;
  if (a.has("--max-experts")) {
    const std::string mp = a.get("--max-experts");
    max_experts = cli::load_float<T>("--max-experts", mp, {"batch", "group"});
    cli::expect_shape(*max_experts, tokens, "--max-experts", mp);
    cli::expect_finite(*max_experts, "--max-experts", mp);
  }
  const OptionalView<T> me = max_experts ? OptionalView<T>(*max_experts) : std::nullopt;
  const OptionalView<T>& u = in.uniform;
  cli::Outputs out(a);
  if (a.has("--dense")) {
    const auto d = v1 ? top2_gating_mtf_v1_dense(logits, o, me, u) : top2_gating_dense(logits, o, in);
    out.add("dispatch.npy", d.dispatch);
    out.add("combine.npy", d.combine);
    out.add("aux_loss.npy", Tensor<T>::scalar(d.aux_loss));
    out.add_text("stats.json", gate_stats_json(a, o, logits.shape(), d.combine.shape().size_of("expert_capacity"),
                                               d.stats, static_cast<double>(d.aux_loss)));
    out.commit();
    print_stats("gate (dense)", d.stats, static_cast<double>(d.aux_loss));
  } else {
    const auto r = v1 ? top2_gating_mtf_v1(logits, o, me, u) : top2_gating(logits, o, in);
    out.add("dispatch.npy", r.plan.dispatch_tensor());
    out.add("combine.npy", r.plan.combine_tensor());
    out.add("aux_loss.npy", Tensor<T>::scalar(r.aux_loss));
    add_plan(out, r.plan);
    out.add_text("stats.json",
                 gate_stats_json(a, o, logits.shape(), r.plan.capacity.size, r.stats, static_cast<double>(r.aux_loss)));
    out.commit();
    print_stats("gate", r.stats, static_cast<double>(r.aux_loss));
  }
}

template <class T>
void run_truncated(const Args& a) {
  const std::string gp = a.get("--gates");
  const auto gates = cli::load_float<T>("--gates", gp, {"batch", "group", "experts"});
  cli::expect_finite(gates, "--gates", gp);
  if (gates.size_of("experts") < 1) fail("--gates ", gp, ": no experts (last axis is 0)");
  Top2Options o;
  o.capacity = CapacitySpec::fixed(a.required_integer("--capacity", 1));
  o.ties = parse_ties_flag(a);
  cli::Outputs out(a);
  if (a.has("--dense")) {
    out.add("combine.npy", truncated_top2_gating_dense(gates, o));
  } else {
    const auto r = truncated_top2_gating(gates, o);
    out.add("combine.npy", r.plan.combine_tensor());
  }
  out.commit();
}

/// --exchange and --ranks-per-node, which need --expert-parallel.
void check_exchange_flags(const Args& a) {
  for (const char* f : {"--exchange", "--ranks-per-node"})
    if (a.has(f) && !a.has("--expert-parallel")) fail(f, ": only with --expert-parallel");
}

#if defined(EINMOE_HAS_MPI)
ExpertParallelOptions exchange_options(const Args& a) {
  ExpertParallelOptions ep;
  try {
    ep.exchange = parse_exchange(a.get_or("--exchange", "rows"));
  } catch (const einmoe::error&) {
    fail("--exchange: unknown exchange \"", a.get("--exchange"), "\" (rows, padded, hierarchical)");
  }
  if (a.has("--ranks-per-node") && ep.exchange != Exchange::hierarchical)
    fail("--ranks-per-node: only with --exchange hierarchical");
  const long long m = a.integer("--ranks-per-node", 1, 0);
  if (m > 1000000) fail("--ranks-per-node ", m, ": at most 1000000");
  ep.ranks_per_node = static_cast<int>(m);
  return ep;
}

/// Rank 0 receives every rank's rows of `local` ([n_r, ...] along its first
/// dim, the same row length everywhere) in rank order; others get an empty
/// tensor. Collective.
template <class T>
Tensor<T> gather_rows(const Tensor<T>& local, const Shape& whole) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const index_t row = local.rank() > 0 && local.shape()[0].size > 0
                          ? local.size() / local.shape()[0].size
                          : whole.num_elements() / std::max<index_t>(1, whole[0].size);
  MPI_Datatype rt;
  MPI_Type_contiguous(static_cast<int>(row), std::is_same<T, float>::value ? MPI_FLOAT : MPI_DOUBLE, &rt);
  MPI_Type_commit(&rt);
  int n = static_cast<int>(local.rank() > 0 ? local.shape()[0].size : 0);
  std::vector<int> counts(static_cast<std::size_t>(size)), displs(static_cast<std::size_t>(size));
  MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  for (int r = 1; r < size; ++r)
    displs[static_cast<std::size_t>(r)] =
        displs[static_cast<std::size_t>(r - 1)] + counts[static_cast<std::size_t>(r - 1)];
  Tensor<T> out = rank == 0 ? Tensor<T>(whole, uninitialized) : Tensor<T>();
  MPI_Gatherv(local.data(), n, rt, rank == 0 ? out.data() : nullptr, counts.data(), displs.data(), rt, 0,
              MPI_COMM_WORLD);
  MPI_Type_free(&rt);
  return out;
}
#endif

/// Whether moe / block run the backward pass (--grad-outputs), with the
/// flags that go with it checked before anything runs (--aux-loss-coef and
/// --z-loss-coef need it; int8 and --expert-parallel cannot); makes `o`
/// trainable when so.
bool wants_backward(const Args& a, MoEOptions& o) {
  if (!a.has("--grad-outputs")) {
    for (const char* f : {"--aux-loss-coef", "--z-loss-coef"})
      if (a.has(f)) fail(f, ": needs --grad-outputs (the backward pass)");
    return false;
  }
  if (o.precision == Precision::int8)
    fail("--grad-outputs: int8 expert weights are inference-only (--precision fp32 or bf16)");
  if (a.has("--expert-parallel")) fail("--grad-outputs: not yet with --expert-parallel");
  a.real("--aux-loss-coef", 0.0);
  a.real("--z-loss-coef", 0.0);
  o.trainable = true;
  return true;
}

/// moe's --grad-outputs DY.npy (the outputs' shape and type, finite),
/// checked before anything runs; nullopt without it.
template <class T>
std::optional<Tensor<T>> grad_outputs_of(const Args& a, const Shape& outputs, MoEOptions& o) {
  if (!wants_backward(a, o)) return std::nullopt;
  if (o.precision == Precision::bf16 && !std::is_same<T, float>::value)
    fail("--grad-outputs: --precision bf16 trains float32 inputs");
  if (o.dense) fail("--grad-outputs: the dense oracle has no backward pass (drop --dense)");
  const std::string p = a.get("--grad-outputs");
  Tensor<T> dy = cli::load_float<T>("--grad-outputs", p, {"batch", "group", "model"});
  const DType want = std::is_same<T, float>::value ? DType::float32 : DType::float64;
  if (read_npy_info(p).dtype != want)
    fail("--grad-outputs ", p, ": dtype differs from --inputs' (", dtype_name(want), ")");
  cli::expect_shape(dy, outputs, "--grad-outputs", p);
  cli::expect_finite(dy, "--grad-outputs", p);
  return dy;
}

/// moe with --grad-outputs: forward_train and backward; writes the outputs,
/// losses and the gradients of the inputs and of every weight given.
template <class T>
void train_moe(const Args& a, const MoEWeights<T>& w, const MoEOptions& o, const Tensor<T>& x,
               const GatingInputs<T>& in, const Tensor<T>& dy) {
  LossCoefficients c;
  c.aux_loss = a.real("--aux-loss-coef", 0.0);
  c.z_loss = a.real("--z-loss-coef", 0.0);
  MoELayer<T> layer(w, o);  // (set_calls: every repetition draws what --seed gives)
  MoETape<T> tape;
  MoEResult<T> r;
  MoEGradients<T> g;
  double best = 0;
  for (index_t rep = 0; rep < a.integer("--repeat", 1, 1); ++rep) {
    layer.set_calls(0);  // every repetition draws what --seed gives
    const auto t0 = std::chrono::steady_clock::now();
    layer.forward_train_into(r, x, tape, in);
    layer.backward_into(g, tape, dy, c);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    best = rep == 0 ? ms : std::min(best, ms);
  }
  cli::Outputs out(a);
  out.add("outputs.npy", r.outputs);
  out.add("aux_loss.npy", Tensor<T>::scalar(r.aux_loss));
  if (a.has("--router")) out.add("z_loss.npy", Tensor<T>::scalar(r.z_loss));
  out.add("grad_inputs.npy", g.inputs);
  out.add("grad_wg.npy", g.wg);
  out.add("grad_wi.npy", g.experts.wi);
  out.add("grad_wo.npy", g.experts.wo);
  auto opt = [&](const char* name, const std::optional<Tensor<T>>& t) {
    if (t) out.add(name, *t);
  };
  opt("grad_bi.npy", g.experts.bi);
  opt("grad_bo.npy", g.experts.bo);
  opt("grad_wi_gate.npy", g.experts.wi_gate);
  if (g.shared) {
    out.add("grad_shared_wi.npy", g.shared->wi);
    out.add("grad_shared_wo.npy", g.shared->wo);
    opt("grad_shared_wi_gate.npy", g.shared->wi_gate);
    opt("grad_shared_gate.npy", g.shared->gate);
  }
  out.commit();
  print_stats("moe (forward and backward)", r.stats, static_cast<double>(r.aux_loss));
  std::printf("moe: forward and backward, best of %lld: %.3f ms (%d threads)\n",
              static_cast<long long>(a.integer("--repeat", 1, 1)), best, num_threads());
}

template <class T>
void run_moe(const Args& a) {
  const std::string xp = a.get("--inputs");
  const auto x = cli::load_float<T>("--inputs", xp, {"batch", "group", "model"});
  cli::expect_finite(x, "--inputs", xp);
  MoEWeights<T> w;
  w.wg = shared_view(cli::load_float<T>("--wg", a.get("--wg"), {"model", "experts"}));
  w.experts.wi = shared_view(cli::load_float<T>("--wi", a.get("--wi"), {"experts", "model", "hidden"}));
  w.experts.wo = shared_view(cli::load_float<T>("--wo", a.get("--wo"), {"experts", "hidden", "model"}));
  const index_t M = x.size_of("model"), E = w.wg.size_of("experts"), H = w.experts.wi.size_of("hidden");
  if (E < 1) fail("--wg ", a.get("--wg"), ": no experts (last axis is 0)");
  cli::expect_shape(w.wg, Shape{{"model", M}, {"experts", E}}, "--wg", a.get("--wg"));
  cli::expect_shape(w.experts.wi, Shape{{"experts", E}, {"model", M}, {"hidden", H}}, "--wi", a.get("--wi"));
  cli::expect_shape(w.experts.wo, Shape{{"experts", E}, {"hidden", H}, {"model", M}}, "--wo", a.get("--wo"));
  if (a.has("--bi")) {
    w.experts.bi = shared_view(cli::load_float<T>("--bi", a.get("--bi"), {"experts", "hidden"}));
    cli::expect_shape(*w.experts.bi, Shape{{"experts", E}, {"hidden", H}}, "--bi", a.get("--bi"));
  }
  if (a.has("--bo")) {
    w.experts.bo = shared_view(cli::load_float<T>("--bo", a.get("--bo"), {"experts", "model"}));
    cli::expect_shape(*w.experts.bo, Shape{{"experts", E}, {"model", M}}, "--bo", a.get("--bo"));
  }
  if (a.has("--wi-gate")) {
    w.experts.wi_gate =
        shared_view(cli::load_float<T>("--wi-gate", a.get("--wi-gate"), {"experts", "model", "hidden"}));
    cli::expect_shape(*w.experts.wi_gate, Shape{{"experts", E}, {"model", M}, {"hidden", H}}, "--wi-gate",
                      a.get("--wi-gate"));
  }
  if (a.has("--shared-wi") || a.has("--shared-wo") || a.has("--shared-wi-gate") || a.has("--shared-gate")) {
    if (!a.has("--shared-wi") || !a.has("--shared-wo"))
      fail(a.has("--shared-wi") ? "--shared-wo" : "--shared-wi", ": a shared expert needs --shared-wi and --shared-wo");
    SharedExpertWeights<T> sw;
    sw.wi = shared_view(cli::load_float<T>("--shared-wi", a.get("--shared-wi"), {"model", "hidden"}));
    const index_t Hs = sw.wi.size_of("hidden");
    cli::expect_shape(sw.wi, Shape{{"model", M}, {"hidden", Hs}}, "--shared-wi", a.get("--shared-wi"));
    sw.wo = shared_view(cli::load_float<T>("--shared-wo", a.get("--shared-wo"), {"hidden", "model"}));
    cli::expect_shape(sw.wo, Shape{{"hidden", Hs}, {"model", M}}, "--shared-wo", a.get("--shared-wo"));
    if (a.has("--shared-wi-gate")) {
      sw.wi_gate = shared_view(cli::load_float<T>("--shared-wi-gate", a.get("--shared-wi-gate"), {"model", "hidden"}));
      cli::expect_shape(*sw.wi_gate, Shape{{"model", M}, {"hidden", Hs}}, "--shared-wi-gate",
                        a.get("--shared-wi-gate"));
    }
    if (a.has("--shared-gate")) {
      sw.gate = shared_view(cli::load_float<T>("--shared-gate", a.get("--shared-gate"), {"model"}));
      cli::expect_shape(*sw.gate, Shape{{"model", M}}, "--shared-gate", a.get("--shared-gate"));
    }
    w.shared = std::move(sw);
  }
  MoEOptions o;
  if (a.has("--router")) {
    router_options<T>(a, router_kind(a), E, o);
    if (expert_choice_capacity_of(o) > x.size_of("group"))
      fail("--capacity: ", expert_choice_capacity_of(o), " exceeds the group's ", x.size_of("group"), " tokens");
  } else {
    for (const auto& f : kTopkOnly)
      if (a.has(f)) fail(f, ": belongs to --router topk (without --router, moe uses top-2 gating)");
    o.router = gate_options(a);
  }
  try {
    o.activation = parse_activation(a.get_or("--activation", "relu"));
  } catch (const einmoe::error&) {
    fail("--activation: unknown activation \"", a.get("--activation"), "\" (relu, gelu, gelu_tanh, silu)");
  }
  o.dense = a.has("--dense");
  try {
    o.precision = parse_precision(a.get_or("--precision", "fp32"));
  } catch (const einmoe::error&) {
    fail("--precision: unknown precision \"", a.get("--precision"), "\" (fp32, bf16, int8)");
  }
  if (o.dense && o.precision != Precision::fp32)
    fail("--precision ", a.get("--precision"), ": --dense computes in full precision (fp32)");
  const Shape tokens = x.shape().without({"model"});
  const auto in = a.has("--router") ? GatingInputs<T>{} : gate_inputs<T>(a, tokens, tokens.with(Dim("experts", E)));
  const std::optional<Tensor<T>> dy = grad_outputs_of<T>(a, x.shape(), o);
  // --repeat N: run the layer N times and report the best time (the steady
  // state of a model: the layer reuses its workspace and the output buffer).
  const index_t reps = a.integer("--repeat", 1, 1);
  check_exchange_flags(a);
  if (a.has("--expert-parallel")) {
#if defined(EINMOE_HAS_MPI)
    if (o.dense) fail("--dense: runs on one process, not with --expert-parallel");
    for (const char* f : {"--importance", "--uniform", "--gumbel"})
      if (a.has(f)) fail(f, ": not supported with --expert-parallel (draws come from --seed)");
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    // each rank: the same files, its experts, its contiguous share of the groups
    ExpertParallelMoE<T> layer(MPI_COMM_WORLD, w, o, exchange_options(a));
    const index_t G = x.size_of("batch"), g0 = G * rank / size, g1 = G * (rank + 1) / size;
    const Tensor<T> mine = slice(x, "batch", g0, g1 - g0);
    MoEResult<T> r;
    double best = 0;
    for (index_t rep = 0; rep < reps; ++rep) {
      MPI_Barrier(MPI_COMM_WORLD);
      layer.set_calls(0);  // every repetition draws what --seed gives
      const auto t0 = std::chrono::steady_clock::now();
      layer.forward_into(r, mine);
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(), worst = 0;
      MPI_Allreduce(&ms, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      best = rep == 0 ? worst : std::min(best, worst);
    }
    const Tensor<T> all = gather_rows(r.outputs, x.shape());
    if (rank != 0) return;
    cli::Outputs out(a);
    out.add("outputs.npy", all);
    out.add("aux_loss.npy", Tensor<T>::scalar(r.aux_loss));
    if (a.has("--router")) out.add("z_loss.npy", Tensor<T>::scalar(r.z_loss));
    out.commit();
    print_stats("moe (expert parallel)", r.stats, static_cast<double>(r.aux_loss));
    std::printf("moe: %d ranks, best of %lld: %.3f ms (%d threads per rank)\n", size, static_cast<long long>(reps),
                best, num_threads());
    return;
#else
    fail("--expert-parallel: this einmoe was built without MPI (libopenmpi-dev)");
#endif
  }
  if (dy) return train_moe(a, w, o, x, in, *dy);
  MoELayer<T> layer(std::move(w), o);
  MoEResult<T> r;
  double best = 0;
  for (index_t rep = 0; rep < reps; ++rep) {
    layer.set_calls(0);  // every repetition draws what --seed gives
    const auto t0 = std::chrono::steady_clock::now();
    layer.forward_into(r, x, in);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    best = rep == 0 ? ms : std::min(best, ms);
  }
  cli::Outputs out(a);
  out.add("outputs.npy", r.outputs);
  out.add("aux_loss.npy", Tensor<T>::scalar(r.aux_loss));
  if (a.has("--router")) out.add("z_loss.npy", Tensor<T>::scalar(r.z_loss));
  out.commit();
  print_stats(o.dense ? "moe (dense)" : "moe", r.stats, static_cast<double>(r.aux_loss));
  std::printf("moe: best of %lld: %.3f ms (%d threads)\n", static_cast<long long>(reps), best, num_threads());
}

#if defined(EINMOE_HAS_JSON)
/// block's --grad-outputs DY.npy ([T, M] as --inputs, finite), checked
/// before anything runs; nullopt without it.
std::optional<Tensor<float>> block_grad_outputs(const Args& a, const Shape& inputs, MoEOptions& o) {
  if (!wants_backward(a, o)) return std::nullopt;
  const std::string p = a.get("--grad-outputs");
  Tensor<float> dy = cli::load_float<float>("--grad-outputs", p, {"tokens", "model"});
  cli::expect_shape(dy, inputs, "--grad-outputs", p);
  cli::expect_finite(dy, "--grad-outputs", p);
  return dy;
}

void run_block(const Args& a) {
  const std::string dir = a.get("--model");
  const index_t layer = a.integer("--layer", 0, 0);
  if (!a.has("--layer")) fail("--layer: required (a decoder layer index)");
  Precision p = Precision::fp32;
  try {
    p = parse_precision(a.get_or("--precision", "fp32"));
  } catch (const einmoe::error&) {
    fail("--precision: unknown precision \"", a.get("--precision"), "\" (fp32, bf16, int8)");
  }
  const std::string xp = a.get("--inputs");
  const auto x = cli::load_float<float>("--inputs", xp, {"tokens", "model"});
  cli::expect_finite(x, "--inputs", xp);
  std::unique_ptr<HfCheckpoint> ck;
  try {
    ck = std::make_unique<HfCheckpoint>(dir);
  } catch (const einmoe::error& e) {
    fail("--model ", dir, ": ", e.what());
  }
  const index_t M = ck->config().hidden_size;
  if (x.size_of("model") != M)
    fail("--inputs ", xp, ": rows of ", x.size_of("model"), " values, but the model's hidden_size is ", M);
  if (layer >= ck->config().num_layers || !ck->config().is_moe_layer(layer)) {
    try {
      ck->moe_options(layer);  // the message says why
    } catch (const einmoe::error& e) {
      fail("--layer ", layer, ": ", e.what());
    }
  }
  check_exchange_flags(a);
  MoEOptions o;
  try {
    o = ck->moe_options(layer, p);
  } catch (const einmoe::error& e) {
    fail("--model ", dir, ": ", e.what());
  }
  if (a.has("--group-fill")) {
    auto* t = std::get_if<TopKOptions>(&o.router);
    if (!t || t->expert_groups <= 1)
      fail("--group-fill: layer ", layer, " of ", dir, " has no group-limited routing (deepseek_v3 with n_group > 1)");
    try {
      t->group_fill = parse_group_fill(a.get("--group-fill"));
    } catch (const einmoe::error&) {
      fail("--group-fill: unknown group fill \"", a.get("--group-fill"), "\" (zero, neg-inf)");
    }
  }
  const std::optional<Tensor<float>> dy = block_grad_outputs(a, x.shape(), o);
  if (a.has("--expert-parallel")) {
#if defined(EINMOE_HAS_MPI)
    // Each rank: the same checkpoint, its block of experts, its contiguous
    // share of the tokens (each token its own group: routing is dropless and
    // per token, so the split changes only the experts' row order).
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    std::optional<ExpertParallelMoE<float>> ep;
    if (ck->bf16_experts(layer)) ep.emplace(MPI_COMM_WORLD, ck->moe_weights<bfloat16>(layer), o, exchange_options(a));
    else ep.emplace(MPI_COMM_WORLD, ck->moe_weights<float>(layer), o, exchange_options(a));
    const index_t T = x.size_of("tokens"), t0 = T * rank / size, t1 = T * (rank + 1) / size;
    Tensor<float> mine = slice(x, "tokens", t0, t1 - t0);
    mine.set_shape(Shape{{"batch", t1 - t0}, {"group", 1}, {"model", M}});
    const auto r = ep->forward(mine);
    Tensor<float> local = r.outputs;
    local.set_shape(Shape{{"tokens", t1 - t0}, {"model", M}});
    const Tensor<float> all = gather_rows(local, x.shape());
    if (rank != 0) return;
    Tensor<float> logits = ep->router_logits(reshape(x, Shape{{"group", T}, {"model", M}}));
    logits.set_shape(Shape{{"tokens", T}, {"experts", ck->config().experts}});
    cli::Outputs out(a);
    out.add("outputs.npy", all);
    out.add("router_logits.npy", logits);
    out.commit();
    std::printf("block (expert parallel, %d ranks): %s layer %lld, %lld tokens, %s experts; tokens per expert:", size,
                ck->config().model_type.c_str(), static_cast<long long>(layer), static_cast<long long>(T),
                to_string(p));
    for (auto n : r.stats.tokens_per_expert) std::printf(" %lld", static_cast<long long>(n));
    std::printf("\n");
    return;
#else
    fail("--expert-parallel: this einmoe was built without MPI (libopenmpi-dev)");
#endif
  }
  std::optional<MoELayer<float>> l;
  try {
    if (ck->bf16_experts(layer)) l.emplace(ck->moe_weights<bfloat16>(layer), o);
    else l.emplace(ck->moe_weights<float>(layer), o);
  } catch (const einmoe::error& e) {
    fail("--model ", dir, ": ", e.what());
  }
  MoETape<float> tape;
  const auto r = dy ? l->forward_train(x, tape) : l->forward(x);
  Tensor<float> logits = l->router_logits(reshape(x, Shape{{"group", x.size_of("tokens")}, {"model", M}}));
  logits.set_shape(Shape{{"tokens", x.size_of("tokens")}, {"experts", ck->config().experts}});
  cli::Outputs out(a);
  out.add("outputs.npy", r.outputs);
  out.add("router_logits.npy", logits);
  if (dy) {
    const LossCoefficients c{a.real("--aux-loss-coef", 0.0), a.real("--z-loss-coef", 0.0)};
    const MoEGradients<float> g = l->backward(tape, *dy, c);
    out.add("grad_inputs.npy", g.inputs);
    std::vector<std::pair<std::string, TensorView<const float>>> views;
    const auto grads = ck->block_gradients(layer, g);
    for (const auto& [name, t] : grads) views.emplace_back(name, t);
    std::ostringstream bytes;
    write_safetensors(bytes, views);
    out.add_text("grads.safetensors", bytes.str());
  }
  out.commit();
  std::printf("block: %s layer %lld, %lld tokens, %s experts; tokens per expert:", ck->config().model_type.c_str(),
              static_cast<long long>(layer), static_cast<long long>(x.size_of("tokens")), to_string(p));
  for (auto n : r.stats.tokens_per_expert) std::printf(" %lld", static_cast<long long>(n));
  std::printf("\n");
}
#endif

/// Loads an int32/int64 .npy as int64 with the given dim names.
Tensor<std::int64_t> load_ids(const std::string& flag, const std::string& path, const std::vector<std::string>& names) {
  NpyInfo info;
  try {
    info = read_npy_info(path);
  } catch (const einmoe::error& e) {
    fail(flag, " ", path, ": ", e.what());
  }
  if (info.dtype != DType::int32 && info.dtype != DType::int64)
    fail(flag, " ", path, ": dtype ", dtype_name(info.dtype), ", expected int32 or int64");
  if (info.sizes.size() != names.size())
    fail(flag, " ", path, ": rank ", info.sizes.size(), ", expected ", names.size());
  try {
    if (info.dtype == DType::int32) return cast<std::int64_t>(load_npy<std::int32_t>(path, names));
    return load_npy<std::int64_t>(path, names);
  } catch (const einmoe::error& e) {
    fail(flag, " ", path, ": ", e.what());
  }
}

/// Writes one .npy file, the --out path (see cli::Outputs).
template <class T>
void write_file(const Args& a, const Tensor<T>& t) {
  cli::Outputs out = cli::Outputs::file(a);
  out.add("out", t);
  out.commit();
}

void run_mask(const std::string& kind, const Args& a) {
  a.get("--out");  // required: checked before any work
  Tensor<bool> vis;
  if (kind == "causal") {
    vis = causal_mask(Dim("length", a.required_integer("--length", 1)));
  } else if (kind == "local-block") {
    vis = local_block_mask(Dim("block_length", a.required_integer("--block", 1)));
  } else if (kind == "padding") {
    const auto ids = load_ids("--ids", a.get("--ids"), {"batch", "length"});
    vis = padding_mask(ids);
  } else {  // segment
    const auto q = load_ids("--query", a.get("--query"), {"batch", "length"});
    if (a.has("--memory")) {
      const auto m = load_ids("--memory", a.get("--memory"), {"batch", "memory_length"});
      if (m.size_of("batch") != q.size_of("batch"))
        fail("--memory ", a.get("--memory"), ": batch ", m.size_of("batch"), " does not match --query's ",
             q.size_of("batch"));
      vis = same_segment_mask(q, m);
    } else {
      vis = same_segment_mask(q);
    }
  }
  write_file(a, to_bias<float>(vis));
}

/// Scores and transitions keep the --transitions file's float type.
template <class F>
void run_beam(const Args& a) {
  const std::string tp = a.get("--transitions");
  const auto T = cli::load_float<F>("--transitions", tp, {"prev", "vocab"});
  const index_t V = T.size_of("vocab");
  if (T.size_of("prev") != V) fail("--transitions ", tp, ": shape ", T.shape(), " is not square [V, V]");
  if (V < 2) fail("--transitions ", tp, ": vocab of ", V, "; beam search needs at least 2");
  for (index_t r = 0; r < V; ++r) {
    bool finite = false;
    for (index_t v = 0; v < V; ++v) {
      const F x = T[r * V + v];
      if (std::isnan(x) || x == std::numeric_limits<F>::infinity())
        fail("--transitions ", tp, ": element [", r, ", ", v, "] is ", x);
      finite = finite || std::isfinite(x);
    }
    if (!finite) fail("--transitions ", tp, ": row ", r, " is all -inf");
  }
  const index_t B = a.required_integer("--batch", 1), K = a.required_integer("--beam", 1),
                L = a.required_integer("--length", 1);
  a.get("--alpha");
  const double alpha = a.real("--alpha", 0.0);
  BeamSearchOptions o;
  o.eos_id = a.integer("--eos", 0, 1);
  if (o.eos_id >= V) fail("--eos: ", o.eos_id, " is not in the vocab [0, ", V, ")");
  o.stop_early = !a.has("--no-stop-early");
  o.decode_length = a.integer("--decode-length", 0, -1);
  Tensor<std::int64_t> start(Shape{{"batch", B}});
  if (a.has("--start")) {
    start = load_ids("--start", a.get("--start"), {"batch"});
    if (start.size() != B) fail("--start ", a.get("--start"), ": ", start.size(), " entries for --batch ", B);
    for (auto s : start)
      if (s < 0 || s >= V) fail("--start ", a.get("--start"), ": token ", s, " is not in [0, ", V, ")");
  }
  BeamLogitsFn<F> fn = [&](index_t i, const TensorView<const std::int64_t>& ids, std::vector<Tensor<F>>&) {
    Tensor<F> logits(Shape{{"batch", B}, {"beam", K}, {"vocab", V}}, uninitialized);
    for (index_t b = 0; b < B; ++b)
      for (index_t k = 0; k < K; ++k) {
        const std::int64_t prev = i == 0 ? start[b] : ids[(b * K + k) * L + i - 1];
        std::copy_n(T.data() + prev * V, V, logits.data() + (b * K + k) * V);
      }
    return logits;
  };
  const Tensor<std::int64_t> init(Shape{{"batch", B}, {"beam", K}, {"length", L}});
  const auto r = [&] {
    try {
      return beam_search<F>(fn, init, static_cast<F>(alpha), o);
    } catch (const einmoe::value_error& e) {  // the one parameter left to check
      fail("--alpha ", alpha, ": ", e.what());
    }
  }();
  cli::Outputs out(a);
  out.add("ids.npy", r.ids);
  out.add("scores.npy", r.scores);
  out.add("steps.npy", Tensor<std::int64_t>::scalar(r.steps));
  out.commit();
  std::printf("beam: %lld steps; best score per row:", static_cast<long long>(r.steps));
  for (index_t b = 0; b < B; ++b) std::printf(" %.6g", static_cast<double>(r.scores[b * K]));
  std::printf("\n");
}

/// Runs `fn<float>` or `fn<double>` by the dtype of the file behind `flag`.
template <class F32, class F64>
void by_dtype(const Args& a, const std::string& flag, F32&& f32, F64&& f64) {
  const std::string path = a.get(flag);
  NpyInfo info;
  try {
    info = read_npy_info(path);
  } catch (const einmoe::error& e) {
    fail(flag, " ", path, ": ", e.what());
  }
  if (info.dtype == DType::float32) f32();
  else if (info.dtype == DType::float64) f64();
  else fail(flag, " ", path, ": dtype ", dtype_name(info.dtype), ", expected float32 or float64");
}

int run(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::fputs(kUsage, argv.empty() ? stderr : stdout);
    return argv.empty() ? 2 : 0;
  }
  if (argv[0] == "--version") {
    std::printf("einmoe %s (oneDNN kernels: %s, MPI: %s, Hugging Face checkpoints: %s)\n", einmoe::version,
#if defined(EINMOE_HAS_DNNL)
                "yes",
#else
                "no",
#endif
#if defined(EINMOE_HAS_MPI)
                "yes",
#else
                "no",
#endif
#if defined(EINMOE_HAS_JSON)
                "yes");
#else
                "no");
#endif
    return argv.size() == 1 ? 0 : (std::fprintf(stderr, "einmoe: --version takes no arguments\n"), 2);
  }
  const std::string cmd = argv[0];
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  const bool help = std::find(rest.begin(), rest.end(), "--help") != rest.end();
  if (cmd == "gate") {
    auto flags = gate_flags();
    flags.push_back({"--logits", true});
    flags.push_back({"--mtf-v1", false});
    flags.push_back({"--max-experts", true});
    if (help) {
      std::printf(
          "usage: einmoe gate --logits L.npy --capacity C [flags] --out DIR\n"
          "  --logits L.npy           [G,S,E] router logits\n"
          "  --mtf-v1                 Mesh TF's other _top_2_gating (max_experts; gates renormalized after\n"
          "                           capacity with +1e-9; threshold/random on the raw gate_2; no sampling)\n"
          "  --max-experts M.npy      with --mtf-v1: [G,S] at most this many experts per token\n%s%s"
          "writes DIR/dispatch.npy, DIR/combine.npy [G,S,E,C], DIR/aux_loss.npy (0-d), the sparse plan\n"
          "DIR/expert.npy and DIR/slot.npy (int64 [G,S,2]: each token's first and second expert and\n"
          "its slot, -1 where not kept) and DIR/weight.npy [G,S,2] (not with --dense), and\n"
          "DIR/stats.json (the options used, tokens per expert, dropped fractions)\n",
          kGateFlags, kCommonFlags);
      return 0;
    }
    const Args a(rest, flags, cmd);
    apply_threads(a);
    by_dtype(
        a, "--logits", [&] { run_gate<float>(a); }, [&] { run_gate<double>(a); });
  } else if (cmd == "route") {
    auto flags = router_flags();
    for (const char* f : {"--logits", "--threads", "--out"}) flags.push_back({f, true});
    flags.push_back({"--dense", false});
    flags.push_back({"--help", false});
    if (help) {
      std::printf(
          "usage: einmoe route --logits L.npy --router topk|expert-choice [flags] --out DIR\n"
          "  --logits L.npy           [G,S,E] router logits (-inf masks an expert)\n%s%s"
          "writes DIR/combine.npy [G,S,E] (weights, 0 where not routed), DIR/slot.npy int64 [G,S,E]\n"
          "(position in the expert's buffer within the group, -1 where not routed), DIR/aux_loss.npy\n"
          "and DIR/z_loss.npy (0-d float64)\n",
          kRouterFlags, kCommonFlags);
      return 0;
    }
    const Args a(rest, flags, cmd);
    apply_threads(a);
    by_dtype(
        a, "--logits", [&] { run_route<float>(a); }, [&] { run_route<double>(a); });
  } else if (cmd == "truncated-gate") {
    const std::vector<Flag> flags{{"--gates", true},   {"--capacity", true}, {"--ties", true}, {"--dense", false},
                                  {"--threads", true}, {"--out", true},      {"--help", false}};
    if (help) {
      std::printf(
          "usage: einmoe truncated-gate --gates P.npy --capacity C --out DIR\n"
          "  --gates P.npy            [G,S,E] gate probabilities\n"
          "  --capacity C             slots per expert per group (required, positive)\n"
          "  --ties lowest|highest    which expert wins a tie (default lowest; see gate --help)\n%s"
          "writes DIR/combine.npy [G,S,E,C]\n",
          kCommonFlags);
      return 0;
    }
    const Args a(rest, flags, cmd);
    apply_threads(a);
    by_dtype(
        a, "--gates", [&] { run_truncated<float>(a); }, [&] { run_truncated<double>(a); });
  } else if (cmd == "moe") {
    auto flags = gate_flags();
    for (const char* f : {"--inputs", "--wg", "--wi", "--wo", "--bi", "--bo", "--activation", "--precision", "--repeat",
                          "--wi-gate", "--shared-wi", "--shared-wo", "--shared-wi-gate", "--shared-gate", "--router",
                          "--grad-outputs", "--aux-loss-coef", "--z-loss-coef"})
      flags.push_back({f, true});
    flags.push_back({"--expert-parallel", false});
    flags.push_back({"--exchange", true});
    flags.push_back({"--ranks-per-node", true});
    for (const auto& f : kTopkOnly) flags.push_back({f, true});
    if (help) {
      std::printf(
          "usage: einmoe moe --inputs X.npy --wg WG.npy --wi WI.npy --wo WO.npy (--capacity C | --router R) [flags] "
          "--out DIR\n"
          "  --inputs X.npy           [G,S,M] tokens\n"
          "  --wg WG.npy              [M,E] gating weights\n"
          "  --wi WI.npy, --wo WO.npy [E,M,H] and [E,H,M] expert weights\n"
          "  --bi BI.npy, --bo BO.npy optional biases [E,H] and [E,M]\n"
          "  --activation A           relu (default) | gelu | gelu_tanh | silu\n"
          "  --precision P            expert weights in fp32 (default) | bf16 | int8;\n"
          "                           routing and the combine stay in the inputs' float type\n"
          "  --wi-gate WIG.npy        [E,M,H]: gated experts, act(x.wi_gate) * (x.wi)\n"
          "  --shared-wi SWI.npy, --shared-wo SWO.npy   a shared expert [M,Hs], [Hs,M] on every token\n"
          "  --shared-wi-gate SWIG.npy  [M,Hs]: the shared expert gated\n"
          "  --shared-gate SG.npy     [M]: shared output scaled by sigmoid(x . SG)\n"
          "  --repeat N               run N times, report the best time (default 1)\n"
          "  --grad-outputs DY.npy    [G,S,M], the inputs' type: also run the backward pass of\n"
          "                           L = <outputs, DY> + A * aux_loss + Z * z_loss (precision fp32 or bf16)\n"
          "  --aux-loss-coef A, --z-loss-coef Z   the losses' coefficients in L (default 0)\n"
          "  --expert-parallel        under mpirun: each rank keeps its block of experts and its share of\n"
          "                           the groups; rank 0 writes the outputs (the single-process ones)\n"
          "%s"
          "top-2 gating (without --router):\n%s"
          "today's routers:\n%s%s"
          "writes DIR/outputs.npy [G,S,M], DIR/aux_loss.npy (0-d) and, with --router, DIR/z_loss.npy (0-d);\n"
          "with --grad-outputs also DIR/grad_inputs.npy, grad_wg.npy, grad_wi.npy, grad_wo.npy and, for each\n"
          "optional weight given, grad_bi.npy, grad_bo.npy, grad_wi_gate.npy, grad_shared_wi.npy,\n"
          "grad_shared_wo.npy, grad_shared_wi_gate.npy, grad_shared_gate.npy (each its weight's shape)\n",
          kExchangeFlags, kGateFlags, kRouterFlags, kCommonFlags);
      return 0;
    }
    const Args a(rest, flags, cmd);
    apply_threads(a);
    by_dtype(
        a, "--inputs", [&] { run_moe<float>(a); }, [&] { run_moe<double>(a); });
  } else if (cmd == "block") {
    const std::vector<Flag> flags{
        {"--model", true},          {"--layer", true},      {"--inputs", true},           {"--precision", true},
        {"--threads", true},        {"--out", true},        {"--expert-parallel", false}, {"--exchange", true},
        {"--ranks-per-node", true}, {"--group-fill", true}, {"--grad-outputs", true},     {"--aux-loss-coef", true},
        {"--z-loss-coef", true},    {"--help", false}};
    if (help) {
      std::printf(
          "usage: einmoe block --model DIR --layer N --inputs X.npy [--precision P] --out OUT\n"
          "  --model DIR              a Hugging Face model directory: config.json and model.safetensors\n"
          "                           (or sharded, with model.safetensors.index.json); model_type mixtral,\n"
          "                           qwen2_moe, qwen3_moe, olmoe or deepseek_v3\n"
          "  --layer N                the decoder layer whose MoE block runs\n"
          "  --inputs X.npy           [T,M] tokens (float32 or float64; computed in float32)\n"
          "  --precision P            expert weights in fp32 (default) | bf16 | int8 (bf16 checkpoints are\n"
          "                           read at their exact values)\n"
          "  --group-fill F           deepseek_v3: what the experts of unchosen groups score in the top-k:\n"
          "                           zero (default, Hugging Face) | neg-inf (DeepSeek's inference code)\n"
          "  --threads N              threads (default: all cores)\n"
          "  --expert-parallel        under mpirun: each rank keeps its block of experts and its share of\n"
          "                           the tokens; rank 0 writes the outputs\n"
          "  --grad-outputs DY.npy    [T,M]: also run the backward pass of L = <outputs, DY> + A * aux_loss\n"
          "                           + Z * z_loss (--precision fp32 or bf16)\n"
          "  --aux-loss-coef A, --z-loss-coef Z   the losses' coefficients in L (default 0)\n"
          "%s"
          "  --out OUT                writes OUT/outputs.npy [T,M] and OUT/router_logits.npy [T,E] (float32);\n"
          "                           with --grad-outputs also OUT/grad_inputs.npy [T,M] and\n"
          "                           OUT/grads.safetensors (F32, one gradient per checkpoint tensor of the\n"
          "                           block, under its name and in its shape)\n",
          kExchangeFlags);
      return 0;
    }
#if defined(EINMOE_HAS_JSON)
    const Args a(rest, flags, cmd);
    apply_threads(a);
    run_block(a);
#else
    fail(
        "block: this einmoe was built without nlohmann/json (nlohmann-json3-dev), so without Hugging Face checkpoints");
#endif
  } else if (cmd == "mask") {
    const std::vector<std::string> kinds{"causal", "local-block", "padding", "segment"};
    if (rest.empty() || rest[0] == "--help") {
      std::printf(
          "usage: einmoe mask <kind> [flags] --out F.npy     (float32 additive bias: 0 visible, -1e9 masked)\n"
          "  causal --length N                 [length, memory_length]\n"
          "  local-block --block N             [block_length, memory_length = 2N] (Mesh TF local block)\n"
          "  padding --ids IDS.npy             int32/int64 [B, L] -> [B, L] (masked where id == 0)\n"
          "  segment --query Q.npy [--memory K.npy]  [B, Lq] (and [B, Lm]) -> [B, Lq, Lm]\n");
      if (rest.empty()) fail("mask: missing kind (causal, local-block, padding, segment)");
      return 0;
    }
    const std::string kind = rest[0];
    if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end())
      fail("mask: unknown kind \"", kind, "\" (causal, local-block, padding, segment)");
    std::vector<Flag> flags{{"--out", true}, {"--help", false}};
    if (kind == "causal") flags.push_back({"--length", true});
    if (kind == "local-block") flags.push_back({"--block", true});
    if (kind == "padding") flags.push_back({"--ids", true});
    if (kind == "segment") flags.push_back({"--query", true}), flags.push_back({"--memory", true});
    const Args a(std::vector<std::string>(rest.begin() + 1, rest.end()), flags, "mask " + kind);
    if (a.has("--help")) return run({"mask", "--help"});
    run_mask(kind, a);
  } else if (cmd == "beam") {
    const std::vector<Flag> flags{{"--transitions", true}, {"--batch", true},         {"--beam", true},
                                  {"--length", true},      {"--alpha", true},         {"--eos", true},
                                  {"--start", true},       {"--decode-length", true}, {"--no-stop-early", false},
                                  {"--threads", true},     {"--out", true},           {"--help", false}};
    if (help) {
      std::printf(
          "usage: einmoe beam --transitions T.npy --batch B --beam K --length L --alpha A [flags] --out DIR\n"
          "  --transitions T.npy      [V, V] bigram logits: step i of a beam uses row T[previous token]\n"
          "  --batch B, --beam K, --length L   sizes (positive)\n"
          "  --alpha A                length penalty exponent ((5 + i + 1) / 6)^A\n"
          "  --eos ID                 end-of-sequence id (default 1)\n"
          "  --start S.npy            int [B]: the token before step 0 per row (default 0)\n"
          "  --decode-length N        at most N steps (default: L)\n"
          "  --no-stop-early          run until the decode length\n"
          "  --out DIR                writes ids.npy int64 [B,K,L], scores.npy [B,K] (the float type of\n"
          "                           --transitions), steps.npy int64\n");
      return 0;
    }
    const Args a(rest, flags, cmd);
    apply_threads(a);
    by_dtype(
        a, "--transitions", [&] { run_beam<float>(a); }, [&] { run_beam<double>(a); });
  } else {
    fail("unknown command \"", cmd, "\" (gate, route, truncated-gate, moe, block, mask, beam; see einmoe --help)");
  }
  return 0;
}

}  // namespace

namespace {
/// MPI for --expert-parallel: initialized only when asked for, finalized on
/// every way out; only rank 0 prints errors (every rank meets the same ones).
struct MpiSession {
  bool on = false;
  int rank = 0;
  MpiSession(int argc, char** argv) {
#if defined(EINMOE_HAS_MPI)
    for (int i = 1; i < argc; ++i) on = on || std::strcmp(argv[i], "--expert-parallel") == 0;
    if (on) {
      MPI_Init(&argc, &argv);
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    }
#else
    (void)argc, (void)argv;
#endif
  }
  ~MpiSession() {
#if defined(EINMOE_HAS_MPI)
    if (on) MPI_Finalize();
#endif
  }
  bool quiet() const { return rank != 0; }
};
}  // namespace

int main(int argc, char** argv) {
  const MpiSession mpi(argc, argv);
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const cli::CliError& e) {
    if (!mpi.quiet()) std::fprintf(stderr, "einmoe: %s\n", e.what());
    return 2;
  } catch (const einmoe::error& e) {
    if (!mpi.quiet()) std::fprintf(stderr, "einmoe: %s\n", cli::one_line(e.what()).c_str());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "einmoe: out of memory (are the input sizes right?)\n");
    return 2;
  } catch (const std::exception& e) {
    // (not expected: every failure the command foresees is exit 2)
    std::fprintf(stderr, "einmoe: internal error: %s\n", cli::one_line(e.what()).c_str());
    return 2;
  }
}
