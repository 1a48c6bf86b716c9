// einmoe/routers/topk.hpp - the tokens-choose top-k router of today's MoE
// models (Switch, Mixtral, Qwen-MoE, OLMoE, DeepSeek-V3, flaxformer,
// DeepSpeed), fast (a RoutingPlan) and dense (the one-hot oracle).
//
// Example:
//   TopKOptions o;
//   o.k = 8;
//   o.score = Score::sigmoid;                  // DeepSeek-V3
//   o.bias = e_score_correction_bias;          // [experts], for selection only
//   o.groups = 8;                              // group-limited selection:
//   o.topk_groups = 4;                         //   the best 4 of 8 expert groups
//   o.normalize = TopKNormalize::topk;
//   o.scale = 2.5;
//   auto r = topk_routing(logits, o);          // logits [<batch>, group, experts]
//   const RoutingPlan<float>& plan = r.plan;   // also r.aux_loss, r.z_loss, r.stats
//
// Per token (scores in the logits' float type):
//   1. scores s = softmax(logits) over experts, or sigmoid(logits).
//   2. selection scores c = s + bias (bias optional, [E]).
//   3. group-limited selection (groups > 1): experts split into `groups`
//      equal groups, each group scored by the sum of its two largest c; the
//      `topk_groups` best groups stay eligible, the others' c become 0 (as
//      Hugging Face's DeepseekV3TopkRouter does: 0, not -inf).
//   4. the k largest c, in rank order (ties: lower expert index).
//   5. weights from the unbiased s: none (s), topk (s / (sum of the k s +
//      1e-20), before capacity) or kept (s / max(sum of the kept s, eps),
//      after capacity, DeepSpeed); then times `scale`.
// Capacity (optional; without it every choice is kept): C slots per expert
// per group, filled in `priority` order:
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
#include <optional>
#include <string>
#include <vector>

#include "einmoe/core/tensor.hpp"
#include "einmoe/core/threads.hpp"
#include "einmoe/ops/manip.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/routers/routing_plan.hpp"

namespace einmoe {

/// How the router turns logits into scores.
enum class Score { softmax, sigmoid };
/// How the combine weights are normalized (see the file comment).
enum class TopKNormalize { none, topk, kept };
/// The order in which choices take capacity slots (see the file comment).
enum class Priority { choice, bpr, token };

inline const char* to_string(Score s) { return s == Score::softmax ? "softmax" : "sigmoid"; }
inline const char* to_string(TopKNormalize n) {
  return n == TopKNormalize::none ? "none" : n == TopKNormalize::topk ? "topk" : "kept";
}
inline const char* to_string(Priority p) { return p == Priority::choice ? "choice" : p == Priority::bpr ? "bpr" : "token"; }
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

/// Options of the top-k router. Logits are [<batch dims>, group_dim,
/// experts_dim] in any order; the batch dims are all the others.
struct TopKOptions {
  index_t k = 2;                                ///< choices per token, 1 <= k <= E
  Score score = Score::softmax;
  std::vector<double> bias;                     ///< [E] selection bias, or empty
  index_t groups = 1;                           ///< expert groups (1: no group limit)
  index_t topk_groups = 1;                      ///< eligible groups when groups > 1
  TopKNormalize normalize = TopKNormalize::none;
  double scale = 1.0;                           ///< multiplies every weight
  std::optional<Dim> capacity;                  ///< C slots per expert per group; none = dropless
  Priority priority = Priority::choice;
  std::string group_dim = "group";
  std::string experts_dim = "experts";
  std::string capacity_dim = "expert_capacity";  ///< the plan's capacity dim when dropless
};

/// What a router returns: the plan, the two losses, load statistics.
template <class T>
struct RouterResult {
  RoutingPlan<T> plan;
  T aux_loss = T(0);
  T z_loss = T(0);
  RoutingStats stats;
  LossParts<T> parts;  ///< the losses in per-group pieces (topk_aux_loss, z_loss_from_parts)
};

namespace detail {

/// Logits as [<batch>, group, experts] plus the resolved sizes.
template <class T>
struct RouterProblem {
  Tensor<T> logits;
  Shape batch;
  Dim group, experts, capacity;
  index_t G = 0, S = 0, E = 0, C = 0;
};

template <class T>
RouterProblem<T> router_problem(const Tensor<T>& logits, const std::string& group_dim, const std::string& experts_dim,
                                const std::optional<Dim>& capacity, const std::string& capacity_dim, const char* op) {
  static_assert(std::is_floating_point<T>::value, "routers need float or double logits");
  RouterProblem<T> p;
  const Shape& s = logits.shape();
  s.require(group_dim, op);
  s.require(experts_dim, op);
  if (group_dim == experts_dim) raise<value_error>(op, ": group and experts dims are both \"", group_dim, "\"");
  p.batch = s.without({group_dim, experts_dim});
  p.group = s.get(group_dim);
  p.experts = s.get(experts_dim);
  if (p.experts.size < 1) raise<value_error>(op, ": dim \"", p.experts.name, "\" has size 0; need at least one expert");
  p.capacity = capacity ? *capacity : Dim(capacity_dim, std::max<index_t>(p.group.size, 1));
  if (p.capacity.size < 1) raise<value_error>(op, ": capacity \"", p.capacity.name, "\" is ", p.capacity.size, "; must be positive");
  if (s.has(p.capacity.name)) raise<shape_error>(op, ": capacity dim \"", p.capacity.name, "\" is already in the logits");
  p.logits = transpose(logits, p.batch.with(p.group).with(p.experts));
  p.G = p.batch.num_elements();
  p.S = p.group.size;
  p.E = p.experts.size;
  p.C = p.capacity.size;
  check_router_logits(p.logits, p.E, op);
  return p;
}

/// logsumexp of one row.
template <class T>
T logsumexp_row(const T* x, index_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (index_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  T s = T(0);
  for (index_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

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

/// z_loss: mean over all tokens of logsumexp(logits)^2, one flat sum (the
/// dense oracles').
template <class T>
T z_loss_of(const Tensor<T>& logits, index_t tokens, index_t E) {
  if (tokens == 0) return T(0);
  T z = T(0);
  for (index_t t = 0; t < tokens; ++t) {
    const T l = logsumexp_row(logits.data() + t * E, E);
    z += l * l;
  }
  return z / static_cast<T>(tokens);
}
/// Per group g of G (S tokens each): the sum over its tokens of
/// logsumexp(logits)^2, into parts.z.
template <class T>
void z_parts_of(const Tensor<T>& logits, index_t G, index_t S, index_t E, LossParts<T>& parts) {
  parts.z.assign(uz(G), T(0));
  for (index_t g = 0; g < G; ++g) {
    T z = T(0);
    for (index_t t = g * S; t < (g + 1) * S; ++t) {
      const T l = logsumexp_row(logits.data() + t * E, E);
      z += l * l;
    }
    parts.z[uz(g)] = z;
  }
}
/// z_loss: mean over all `tokens` of logsumexp(logits)^2, from the parts.
template <class T>
T z_loss_from_parts(const LossParts<T>& parts, index_t tokens) {
  if (tokens == 0) return T(0);
  T z = T(0);
  for (T v : parts.z) z += v;
  return z / static_cast<T>(tokens);
}
/// The top-k router's aux_loss from per-group pieces (G groups, E experts).
template <class T>
T topk_aux_loss(const LossParts<T>& parts, index_t G, index_t E) {
  T aux = T(0);
  for (T a : parts.aux) aux += a;
  return G > 0 ? aux * static_cast<T>(E) * static_cast<T>(E) / static_cast<T>(G * E) : T(0);
}

inline void check_topk_options(const TopKOptions& o, index_t E, const char* op) {
  if (o.k < 1 || o.k > E) raise<value_error>(op, ": k = ", o.k, " must be in [1, ", E, "] (the number of experts)");
  if (!o.bias.empty() && static_cast<index_t>(o.bias.size()) != E)
    raise<shape_error>(op, ": bias has ", o.bias.size(), " entries but there are ", E, " experts");
  for (double b : o.bias)
    if (!std::isfinite(b)) raise<value_error>(op, ": bias contains ", b);
  if (o.groups < 1 || E % o.groups != 0)
    raise<value_error>(op, ": groups = ", o.groups, " must be positive and divide the ", E, " experts");
  if (o.groups > 1) {
    if (E / o.groups < 2) raise<value_error>(op, ": groups = ", o.groups, " leaves fewer than 2 experts per group");
    if (o.topk_groups < 1 || o.topk_groups > o.groups)
      raise<value_error>(op, ": topk_groups = ", o.topk_groups, " must be in [1, ", o.groups, "]");
    if (o.topk_groups * (E / o.groups) < o.k)
      raise<value_error>(op, ": topk_groups = ", o.topk_groups, " groups of ", E / o.groups, " experts hold fewer than k = ", o.k);
  }
  if (!std::isfinite(o.scale)) raise<value_error>(op, ": scale ", o.scale, " is not finite");
}

/// The k choices of one token (selection steps 2-4): experts in rank order.
template <class T>
void select_topk(const T* s, index_t E, const TopKOptions& o, T* c, std::vector<T>& group_score,
                 std::vector<char>& group_on, std::int32_t* chosen) {
  for (index_t e = 0; e < E; ++e) c[e] = o.bias.empty() ? s[e] : s[e] + static_cast<T>(o.bias[uz(e)]);
  if (o.groups > 1) {
    const index_t per = E / o.groups;
    for (index_t g = 0; g < o.groups; ++g) {
      T a = -std::numeric_limits<T>::infinity(), b = a;  // the two largest
      for (index_t i = 0; i < per; ++i) {
        const T v = c[g * per + i];
        if (ranks_before(v, a)) b = a, a = v;
        else if (ranks_before(v, b)) b = v;
      }
      group_score[uz(g)] = a + b;
      group_on[uz(g)] = 0;
    }
    for (index_t j = 0; j < o.topk_groups; ++j) {
      index_t best = -1;
      for (index_t g = 0; g < o.groups; ++g)
        if (!group_on[uz(g)] && (best < 0 || ranks_before(group_score[uz(g)], group_score[uz(best)]))) best = g;
      group_on[uz(best)] = 1;
    }
    for (index_t e = 0; e < E; ++e)
      if (!group_on[uz(e / per)]) c[e] = T(0);
  }
  // k largest, ties to the lower index: repeated argmax over the not-yet-chosen
  for (index_t j = 0; j < o.k; ++j) {
    index_t best = -1;
    for (index_t e = 0; e < E; ++e) {
      bool taken = false;
      for (index_t i = 0; i < j; ++i) taken = taken || chosen[i] == e;
      if (taken) continue;
      if (best < 0 || ranks_before(c[e], c[best])) best = e;
    }
    chosen[j] = static_cast<std::int32_t>(best);
  }
}

}  // namespace detail

/// Top-k routing, fast: logits [<batch>, group, experts] -> plan, losses,
/// stats. See the file comment for every option.
template <class T>
RouterResult<T> topk_routing(const Tensor<T>& logits, const TopKOptions& o) {
  const char* op = "topk_routing";
  const auto p = detail::router_problem(logits, o.group_dim, o.experts_dim, o.capacity, o.capacity_dim, op);
  detail::check_topk_options(o, p.E, op);
  const index_t G = p.G, S = p.S, E = p.E, C = p.C, K = o.k;
  RouterResult<T> r;
  r.plan.reset(p.batch, p.group, p.experts, p.capacity, K);
  std::vector<T> aux_part(detail::uz(G), T(0));
  std::vector<index_t> wanted1(detail::uz(G)), wanted2(detail::uz(G)), kept1(detail::uz(G)), kept2(detail::uz(G));
  std::vector<double> density(detail::uz(G * E), 0.0);
  detail::parallel_items(G, [&](index_t g) {
    std::vector<T> s(detail::uz(S * E)), c(detail::uz(E)), gs(detail::uz(o.groups)), w(detail::uz(S * K));
    std::vector<char> on(detail::uz(o.groups));
    std::vector<std::int32_t> chosen(detail::uz(S * K));
    const T* L = p.logits.data() + g * S * E;
    std::vector<T> frac(detail::uz(E), T(0)), mean(detail::uz(E), T(0));
    for (index_t t = 0; t < S; ++t) {
      T* st = s.data() + t * E;
      detail::score_row(L + t * E, E, o.score, st);
      detail::select_topk(st, E, o, c.data(), gs, on, chosen.data() + t * K);
      // the loss: fraction choosing e, mean (normalized) score
      T norm = T(1);
      if (o.score == Score::sigmoid) {
        T sum = T(0);
        for (index_t e = 0; e < E; ++e) sum += st[e];
        norm = sum;
      }
      for (index_t e = 0; e < E; ++e) mean[detail::uz(e)] += st[e] / norm;
      for (index_t j = 0; j < K; ++j) frac[detail::uz(chosen[detail::uz(t * K + j)])] += T(1);
      for (index_t j = 0; j < K; ++j) w[detail::uz(t * K + j)] = st[chosen[detail::uz(t * K + j)]];
      if (o.normalize == TopKNormalize::topk) {
        T sum = T(0);
        for (index_t j = 0; j < K; ++j) sum += w[detail::uz(t * K + j)];
        sum += static_cast<T>(1e-20);
        for (index_t j = 0; j < K; ++j) w[detail::uz(t * K + j)] /= sum;
      }
    }
    T aux = T(0);
    for (index_t e = 0; e < E; ++e) aux += (frac[detail::uz(e)] / static_cast<T>(S)) * (mean[detail::uz(e)] / static_cast<T>(S));
    aux_part[detail::uz(g)] = S > 0 ? aux : T(0);

    // the token order of the slots
    std::vector<index_t> order(detail::uz(S));
    std::iota(order.begin(), order.end(), index_t{0});
    if (o.priority == Priority::bpr)
      std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
        return s[detail::uz(a * E + chosen[detail::uz(a * K)])] > s[detail::uz(b * E + chosen[detail::uz(b * K)])];
      });
    std::int32_t* fill = r.plan.fill.data() + g * E;
    const index_t base = g * S * K;
    auto place = [&](index_t t, index_t j) {
      const index_t entry = base + t * K + j;
      const std::int32_t e = chosen[detail::uz(t * K + j)];
      auto& f = fill[e];
      (j == 0 ? wanted1 : wanted2)[detail::uz(g)] += 1;
      if (f >= C) return;  // dropped
      r.plan.expert[detail::uz(entry)] = e;
      r.plan.slot[detail::uz(entry)] = f;
      r.plan.weight[detail::uz(entry)] = w[detail::uz(t * K + j)];
      r.plan.slot_entry[detail::uz(r.plan.slot_index(g, e, f))] = entry;
      ++f;
      (j == 0 ? kept1 : kept2)[detail::uz(g)] += 1;
    };
    if (o.priority == Priority::token) {
      for (index_t t = 0; t < S; ++t)
        for (index_t j = 0; j < K; ++j) place(t, j);
    } else {
      for (index_t j = 0; j < K; ++j)
        for (index_t t : order) place(t, j);
    }
    // kept normalization and scale
    for (index_t t = 0; t < S; ++t) {
      T* wt = r.plan.weight.data() + base + t * K;
      if (o.normalize == TopKNormalize::kept) {
        T sum = T(0);
        for (index_t j = 0; j < K; ++j) sum += wt[j];
        sum = std::max(sum, std::numeric_limits<T>::epsilon());
        for (index_t j = 0; j < K; ++j) wt[j] /= sum;
      }
      if (o.scale != 1.0)
        for (index_t j = 0; j < K; ++j) wt[j] *= static_cast<T>(o.scale);
    }
    for (index_t t = 0; t < S; ++t) density[detail::uz(g * E + chosen[detail::uz(t * K)])] += 1.0;
  });
  r.parts.aux = std::move(aux_part);
  r.aux_loss = detail::topk_aux_loss(r.parts, G, E);
  detail::z_parts_of(p.logits, G, S, E, r.parts);
  r.z_loss = detail::z_loss_from_parts(r.parts, G * S);
  detail::sum_stats(r.stats, r.plan, wanted1, wanted2, kept1, kept2);
  r.stats.first_choices.assign(detail::uz(E), 0);
  for (index_t g = 0; g < G; ++g)
    for (index_t e = 0; e < E; ++e) r.stats.first_choices[detail::uz(e)] += static_cast<index_t>(density[detail::uz(g * E + e)]);
  detail::finish_density(r.stats, G * S);
  return r;
}

/// DeepSeek-V3's auxiliary-loss-free balancing: after a step whose routing
/// sent load[e] choices to expert e, bias[e] += gamma * sign(mean load -
/// load[e]) (sign(0) = 0). bias and load must have the same length.
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
