// einmoe/routers/topk.hpp - the tokens-choose top-k router of today's MoE
// models (Switch, Mixtral, Qwen-MoE, OLMoE, DeepSeek-V3, flaxformer,
// DeepSpeed), fast (a RoutingPlan) and dense (the one-hot oracle).
//
// Example:
//   TopKOptions o;
//   o.k = 8;
//   o.score = Score::sigmoid;                  // DeepSeek-V3
//   o.bias = e_score_correction_bias;          // [experts], for selection only
//   o.expert_groups = 8;                       // group-limited selection:
//   o.topk_expert_groups = 4;                  //   the best 4 of 8 expert groups
//   o.normalize = TopKNormalize::topk;
//   o.scale = 2.5;
//   RouterResult<float> r = topk_routing(logits, o);   // logits [<batch>, group, experts]
//   const RoutingPlan<float>& plan = r.plan;   // also r.aux_loss, r.z_loss, r.stats
//
// Per token (scores in the logits' float type):
//   1. scores s = softmax(logits) over experts, or sigmoid(logits).
//   2. selection scores c = s + bias (bias optional, [E]).
//   3. group-limited selection (expert_groups > 1): experts split into
//      `expert_groups` equal groups, each scored by the sum of its two
//      largest c; the `topk_expert_groups` best groups stay eligible, the
//      others' c become `group_fill`: 0 (GroupFill::zero, the default, as
//      Hugging Face's DeepseekV3TopkRouter) or -inf (GroupFill::neg_inf, as
//      DeepSeek's own inference code). They differ when bias-corrected
//      scores are negative: a 0 can outrank an eligible expert.
//   4. the k largest c, in rank order (ties: lower expert index), by a
//      partial sort: O(E log k) per token.
//   5. weights from the unbiased s: none (s), topk (s / (sum of the k s +
//      1e-20), before capacity) or kept (s / max(sum of the kept s, eps),
//      after capacity, DeepSpeed); then times `scale`.
// Capacity (CapacitySpec; dropless by default: every choice is kept): C
// slots per expert per group, filled in `priority` order:
//   choice - all rank-0 choices in token order, then all rank-1, ...
//            (GShard, Tutel, flaxformer TokensChooseMaskedRouter);
//   bpr    - the same, but within each rank tokens go in order of their
//            rank-0 score s, highest first, ties by token order (V-MoE,
//            flaxformer batch_prioritized_routing);
//   token  - token order, each token's k choices together (DeepSpeed
//            topkgating, drop_policy "position").
// A choice past its expert's capacity is dropped (weight 0). Dropless
// routing still numbers the slots in priority order (capacity = S).
//
// Statistics: RoutingStats counts rank-0 choices as "first" and every later
// rank as "second" (for k > 2 too); density_1 is the rank-0 choice's.
//
// Losses: aux_loss = E^2 * mean over groups and experts of (fraction of the
// group's tokens choosing e among their k, before capacity) * (mean over the
// group of e's score), the scores normalized to sum 1 per token for sigmoid
// (flaxformer _load_balancing_loss, Switch); z_loss = mean over tokens of
// logsumexp(logits)^2 (ST-MoE).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "einmoe/core/threads.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/routers/router.hpp"

namespace einmoe {

/// How the router turns logits into scores.
enum class Score { softmax, sigmoid };
/// How the combine weights are normalized (see the file comment).
enum class TopKNormalize { none, topk, kept };
/// The order in which choices take capacity slots (see the file comment).
enum class Priority { choice, bpr, token };
/// What the experts of expert groups left out of a group-limited selection
/// score (see the file comment).
enum class GroupFill { zero, neg_inf };

inline const char* to_string(Score s) { return s == Score::softmax ? "softmax" : "sigmoid"; }
inline const char* to_string(TopKNormalize n) {
  return n == TopKNormalize::none ? "none" : n == TopKNormalize::topk ? "topk" : "kept";
}
inline const char* to_string(Priority p) {
  return p == Priority::choice ? "choice" : p == Priority::bpr ? "bpr" : "token";
}
inline const char* to_string(GroupFill f) { return f == GroupFill::zero ? "zero" : "neg-inf"; }
inline Score parse_score(const std::string& s) {
  for (auto v : {Score::softmax, Score::sigmoid})
    if (s == to_string(v)) return v;
  detail::raise<value_error>("unknown score \"", s, "\" (softmax, sigmoid)");
}
inline TopKNormalize parse_topk_normalize(const std::string& s) {
  for (auto v : {TopKNormalize::none, TopKNormalize::topk, TopKNormalize::kept})
    if (s == to_string(v)) return v;
  detail::raise<value_error>("unknown normalization \"", s, "\" (none, topk, kept)");
}
inline Priority parse_priority(const std::string& s) {
  for (auto v : {Priority::choice, Priority::bpr, Priority::token})
    if (s == to_string(v)) return v;
  detail::raise<value_error>("unknown priority \"", s, "\" (choice, bpr, token)");
}
inline GroupFill parse_group_fill(const std::string& s) {
  for (auto v : {GroupFill::zero, GroupFill::neg_inf})
    if (s == to_string(v)) return v;
  detail::raise<value_error>("unknown group fill \"", s, "\" (zero, neg-inf)");
}

/// Options of the top-k router. Logits are [<batch dims>, group, experts]
/// in any order (MoEDims names them; the batch dims are all the others).
struct TopKOptions {
  index_t k = 2;  ///< choices per token, 1 <= k <= E
  Score score = Score::softmax;
  std::vector<double> bias;                ///< [E] selection bias, or empty
  index_t expert_groups = 1;               ///< expert groups (1: no group limit; DeepSeek's n_group)
  index_t topk_expert_groups = 1;          ///< eligible expert groups when expert_groups > 1 (topk_group)
  GroupFill group_fill = GroupFill::zero;  ///< the score of experts in groups left out
  TopKNormalize normalize = TopKNormalize::none;
  double scale = 1.0;                                ///< multiplies every weight
  CapacitySpec capacity = CapacitySpec::dropless();  ///< C slots per expert per group (dropless: C = S)
  Priority priority = Priority::choice;
};

namespace detail {

/// softmax or sigmoid of one row into s.
template <class T>
void score_row(const T* x, index_t n, Score score, T* s) {
  if (score == Score::sigmoid) {
    for (index_t i = 0; i < n; ++i) s[i] = T(1) / (T(1) + std::exp(-x[i]));
    return;
  }
  T m = -std::numeric_limits<T>::infinity();
  for (index_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  T sum = T(0);
  for (index_t i = 0; i < n; ++i) sum += (s[i] = std::exp(x[i] - m));
  for (index_t i = 0; i < n; ++i) s[i] /= sum;
}

/// The top-k router's aux_loss from per-group pieces (G groups, E experts).
template <class T>
T topk_aux_loss(const LossParts<T>& parts, index_t G, index_t E) {
  T aux = T(0);
  for (T a : parts.aux) aux += a;
  return G > 0 ? aux * static_cast<T>(E) * static_cast<T>(E) / static_cast<T>(G * E) : T(0);
}

/// value_error naming `op` for options that E experts cannot satisfy.
inline void check_topk_options(const TopKOptions& o, index_t E, const char* op) {
  if (o.k < 1 || o.k > E) raise<value_error>(op, ": k = ", o.k, " must be in [1, ", E, "] (the number of experts)");
  if (!o.bias.empty() && static_cast<index_t>(o.bias.size()) != E)
    raise<shape_error>(op, ": bias has ", o.bias.size(), " entries but there are ", E, " experts");
  for (double b : o.bias)
    if (!std::isfinite(b)) raise<value_error>(op, ": bias contains ", b);
  const index_t n = o.expert_groups;
  if (n < 1 || E % n != 0)
    raise<value_error>(op, ": expert_groups = ", n, " must be positive and divide the ", E, " experts");
  if (n > 1) {
    if (E / n < 2) raise<value_error>(op, ": expert_groups = ", n, " leaves fewer than 2 experts per group");
    if (o.topk_expert_groups < 1 || o.topk_expert_groups > n)
      raise<value_error>(op, ": topk_expert_groups = ", o.topk_expert_groups, " must be in [1, ", n, "]");
    if (o.topk_expert_groups * (E / n) < o.k)
      raise<value_error>(op, ": topk_expert_groups = ", o.topk_expert_groups, " groups of ", E / n,
                         " experts hold fewer than k = ", o.k);
  }
  if (!std::isfinite(o.scale)) raise<value_error>(op, ": scale ", o.scale, " is not finite");
}

/// Step 3 of the file comment: the experts of the expert groups left out
/// get o.group_fill in c. group_score [expert_groups], group_on flags.
template <class T>
void limit_expert_groups(T* c, index_t E, const TopKOptions& o, T* group_score, char* group_on) {
  const index_t n = o.expert_groups, per = E / n;
  for (index_t g = 0; g < n; ++g) {
    T a = -std::numeric_limits<T>::infinity(), b = a;  // the two largest
    for (index_t i = 0; i < per; ++i) {
      const T v = c[g * per + i];
      if (ranks_before(v, a)) b = a, a = v;
      else if (ranks_before(v, b)) b = v;
    }
    group_score[g] = a + b;
    group_on[g] = 0;
  }
  for (index_t j = 0; j < o.topk_expert_groups; ++j) {
    index_t best = -1;
    for (index_t g = 0; g < n; ++g)
      if (!group_on[g] && (best < 0 || ranks_before(group_score[g], group_score[best]))) best = g;
    group_on[best] = 1;
  }
  const T fill = o.group_fill == GroupFill::zero ? T(0) : -std::numeric_limits<T>::infinity();
  for (index_t e = 0; e < E; ++e)
    if (!group_on[e / per]) c[e] = fill;
}

/// The k choices of one token (selection steps 2-4): experts in rank order
/// into chosen[k]. Scratch: c [E], order [E], group_score and group_on
/// [expert_groups].
template <class T>
void select_topk(const T* s, index_t E, const TopKOptions& o, T* c, index_t* order, T* group_score, char* group_on,
                 index_t* chosen) {
  for (index_t e = 0; e < E; ++e) c[e] = o.bias.empty() ? s[e] : s[e] + static_cast<T>(o.bias[uz(e)]);
  if (o.expert_groups > 1) limit_expert_groups(c, E, o, group_score, group_on);
  // the k largest, ties to the lower index: a strict order, so the result is
  // what repeated argmax gives
  std::iota(order, order + E, index_t{0});
  std::partial_sort(order, order + o.k, order + E, [c](index_t a, index_t b) {
    if (ranks_before(c[a], c[b])) return true;
    if (ranks_before(c[b], c[a])) return false;
    return a < b;
  });
  std::copy(order, order + o.k, chosen);
}

/// Group g's tokens: scores, choices (chosen [S, k]), pre-capacity weights
/// w [S, k] and the loss sums; returns the group's aux-loss piece.
template <class T>
T topk_scores_and_choices(const T* L, index_t S, index_t E, const TopKOptions& o,
                          typename RouterWorkspace<T>::Thread& th, T* s, T* w, index_t* chosen) {
  const index_t K = o.k;
  T* c = th.values(1, E);
  T* gs = th.values(2, o.expert_groups);
  T* frac = th.values(4, E);
  T* mean = th.values(5, E);
  index_t* sel = th.indices(2, E);
  char* on = th.flags(0, o.expert_groups);
  std::fill(frac, frac + E, T(0));
  std::fill(mean, mean + E, T(0));
  for (index_t t = 0; t < S; ++t) {
    T* st = s + t * E;
    score_row(L + t * E, E, o.score, st);
    select_topk(st, E, o, c, sel, gs, on, chosen + t * K);
    // the loss: fraction choosing e, mean (normalized) score
    T norm = T(1);
    if (o.score == Score::sigmoid) {
      T sum = T(0);
      for (index_t e = 0; e < E; ++e) sum += st[e];
      norm = sum;
    }
    for (index_t e = 0; e < E; ++e) mean[e] += st[e] / norm;
    for (index_t j = 0; j < K; ++j) frac[chosen[t * K + j]] += T(1);
    for (index_t j = 0; j < K; ++j) w[t * K + j] = st[chosen[t * K + j]];
    if (o.normalize == TopKNormalize::topk) {
      T sum = T(0);
      for (index_t j = 0; j < K; ++j) sum += w[t * K + j];
      sum += static_cast<T>(1e-20);
      for (index_t j = 0; j < K; ++j) w[t * K + j] /= sum;
    }
  }
  T aux = T(0);
  for (index_t e = 0; e < E; ++e) aux += (frac[e] / static_cast<T>(S)) * (mean[e] / static_cast<T>(S));
  return S > 0 ? aux : T(0);
}

/// Group g's slots in priority order (a choice past its expert's capacity
/// is dropped), then the kept normalization and the scale.
template <class T>
void topk_place(RoutingPlan<T>& plan, index_t g, index_t S, index_t E, index_t C, const TopKOptions& o, const T* s,
                const T* w, const index_t* chosen, index_t* order, const GroupCounts& gc) {
  const index_t K = o.k;
  std::iota(order, order + S, index_t{0});
  if (o.priority == Priority::bpr)
    std::sort(order, order + S, [&](index_t a, index_t b) {  // stable by value: ties keep token order
      const T va = s[a * E + chosen[a * K]], vb = s[b * E + chosen[b * K]];
      return va > vb || (va == vb && a < b);
    });
  std::int32_t* taken = plan.taken.data() + g * E;
  const index_t base = g * S * K;
  auto place = [&](index_t t, index_t j) {
    const index_t entry = base + t * K + j;
    const index_t e = chosen[t * K + j];
    auto& f = taken[e];
    (j == 0 ? gc.wanted1 : gc.wanted2)[g] += 1;
    if (f >= C) return;  // dropped
    plan.expert[uz(entry)] = static_cast<std::int32_t>(e);
    plan.slot[uz(entry)] = f;
    plan.weight[uz(entry)] = w[t * K + j];
    plan.slot_entry[uz(plan.slot_index(g, e, f))] = entry;
    ++f;
    (j == 0 ? gc.kept1 : gc.kept2)[g] += 1;
  };
  if (o.priority == Priority::token) {
    for (index_t t = 0; t < S; ++t)
      for (index_t j = 0; j < K; ++j) place(t, j);
  } else {
    for (index_t j = 0; j < K; ++j)
      for (index_t i = 0; i < S; ++i) place(order[i], j);
  }
  for (index_t t = 0; t < S; ++t) {
    T* wt = plan.weight.data() + base + t * K;
    if (o.normalize == TopKNormalize::kept) {
      T sum = T(0);
      for (index_t j = 0; j < K; ++j) sum += wt[j];
      sum = std::max(sum, std::numeric_limits<T>::epsilon());
      for (index_t j = 0; j < K; ++j) wt[j] /= sum;
    }
    if (o.scale != 1.0)
      for (index_t j = 0; j < K; ++j) wt[j] *= static_cast<T>(o.scale);
  }
}

}  // namespace detail

/// Top-k routing into `r`, reusing its and the workspace's memory (a
/// steady-state call allocates nothing): logits [<batch>, group, experts] ->
/// r.plan (k choices per token), r.aux_loss, r.z_loss, r.stats. See the file
/// comment for every option. `in` must be empty (GatingInputs belong to
/// top-2) and `call` is unused (no draws). Throws shape_error for missing
/// dims or a bias of the wrong length, value_error for bad options or logits.
template <class T>
void route_into(RouterResult<T>& r, const TensorView<const T>& logits, const TopKOptions& o, const GatingInputs<T>& in,
                const MoEDims& dims, const RouteCall& call, RouterWorkspace<T>& ws) {
  const char* op = "topk_routing";
  (void)call;
  if (!in.empty()) detail::raise<value_error>(op, ": importance, uniform and gumbel inputs belong to router top2");
  const auto p = detail::router_problem(logits, dims, o.capacity, o.k, op, ws.logits_hold());
  detail::check_topk_options(o, p.E, op);
  const index_t G = p.G, S = p.S, E = p.E, C = p.C, K = o.k;
  r.plan.reset(p.batch, p.group, p.experts, p.capacity, K);
  std::vector<T>& aux_part = ws.group_values(0);
  aux_part.assign(detail::uz(G), T(0));
  const detail::GroupCounts gc = detail::group_counts(ws, G);
  std::vector<index_t>& first = ws.group_counts(4);
  first.assign(detail::uz(G * E), 0);
  r.choice.resize(r.plan.expert.size());
  ws.prepare();
  detail::parallel_items(G, [&](index_t g) {
    auto& th = ws.thread();
    T* s = th.values(0, S * E);
    T* w = th.values(3, S * K);
    index_t* chosen = th.indices(0, S * K);
    aux_part[detail::uz(g)] = detail::topk_scores_and_choices(p.logits.data() + g * S * E, S, E, o, th, s, w, chosen);
    detail::topk_place(r.plan, g, S, E, C, o, s, w, chosen, th.indices(1, S), gc);
    for (index_t t = 0; t < S; ++t) first[detail::uz(g * E + chosen[t * K])] += 1;
    for (index_t i = 0; i < S * K; ++i) r.choice[detail::uz(g * S * K + i)] = static_cast<std::int32_t>(chosen[i]);
  });
  r.parts.aux.assign(aux_part.begin(), aux_part.end());
  r.parts.aux2.clear();
  r.aux_loss = detail::topk_aux_loss(r.parts, G, E);
  detail::z_parts_of(p.logits, G, S, E, r.parts);
  r.z_loss = detail::z_loss_from_parts(r.parts, G * S);
  detail::sum_stats(r.stats, r.plan, gc);
  r.stats.first_choices.assign(detail::uz(E), 0);
  for (index_t g = 0; g < G; ++g)
    for (index_t e = 0; e < E; ++e) r.stats.first_choices[detail::uz(e)] += first[detail::uz(g * E + e)];
  detail::finish_density(r.stats, G * S);
}

/// Top-k routing, fast: logits [<batch>, group, experts] -> plan, losses,
/// stats (see route_into; throws as it does).
template <class T>
RouterResult<T> topk_routing(const TensorView<const T>& logits, const TopKOptions& o, const MoEDims& dims = {}) {
  RouterResult<T> r;
  RouterWorkspace<T> ws;
  route_into(r, logits, o, GatingInputs<T>{}, dims, RouteCall{}, ws);
  return r;
}

/// DeepSeek-V3's auxiliary-loss-free balancing: after a step whose routing
/// sent load[e] choices to expert e, bias[e] += gamma * sign(mean load -
/// load[e]) (sign(0) = 0). shape_error unless bias and load have the same
/// length; value_error for a gamma that is not finite.
inline void update_selection_bias(std::vector<double>& bias, const std::vector<index_t>& load, double gamma) {
  if (bias.size() != load.size())
    detail::raise<shape_error>("update_selection_bias: ", bias.size(), " biases for ", load.size(), " experts");
  if (!std::isfinite(gamma)) detail::raise<value_error>("update_selection_bias: gamma ", gamma, " is not finite");
  if (load.empty()) return;
  double mean = 0;
  for (index_t l : load) mean += static_cast<double>(l);
  mean /= static_cast<double>(load.size());
  for (std::size_t e = 0; e < bias.size(); ++e) {
    const double d = mean - static_cast<double>(load[e]);
    bias[e] += gamma * static_cast<double>((d > 0) - (d < 0));
  }
}

}  // namespace einmoe
