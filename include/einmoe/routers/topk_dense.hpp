// einmoe/routers/topk_dense.hpp - the top-k router the sources' way: one-hot
// expert masks, cumulative sums for the slot priorities, and dense
// [<batch>, group, experts, expert_capacity] combine and dispatch tensors
// (flaxformer TokensChooseMaskedRouter, DeepSpeed topkgating). The oracle the
// fast topk_routing is tested against; O(S * k * E) per group, plus the
// S * E * C outputs.
//
// Example:
//   DenseRouterResult<float> d = topk_routing_dense(logits, o);   // same options as topk_routing
//   Tensor<float> combine = d.combine;        // [<batch>, group, experts, expert_capacity]
//   Tensor<float> dispatch = d.dispatch;      // 1 where combine routes a token, else 0
//   double aux = d.aux_loss, z = d.z_loss;
#pragma once

#include <algorithm>
#include <numeric>

#include "einmoe/routers/topk.hpp"

namespace einmoe {

namespace detail {

/// The sources' selection for one group: each token's (possibly
/// group-masked) biased scores sorted, the first k kept -> idx [S, k].
template <class T>
std::vector<index_t> dense_topk_select(const std::vector<T>& probs, index_t S, index_t E, const TopKOptions& o) {
  const index_t K = o.k;
  std::vector<index_t> idx(uz(S * K));
  for (index_t t = 0; t < S; ++t) {
    std::vector<T> c(uz(E));
    for (index_t e = 0; e < E; ++e)
      c[uz(e)] = probs[uz(t * E + e)] + (o.bias.empty() ? T(0) : static_cast<T>(o.bias[uz(e)]));
    if (o.expert_groups > 1) {
      const index_t per = E / o.expert_groups;
      std::vector<T> gscore(uz(o.expert_groups));
      for (index_t gg = 0; gg < o.expert_groups; ++gg) {
        std::vector<T> v(c.begin() + gg * per, c.begin() + (gg + 1) * per);
        std::sort(v.begin(), v.end(), [](T a, T b) { return a > b; });
        gscore[uz(gg)] = v[0] + v[1];
      }
      std::vector<index_t> gorder(uz(o.expert_groups));
      std::iota(gorder.begin(), gorder.end(), index_t{0});
      std::stable_sort(gorder.begin(), gorder.end(),
                       [&](index_t a, index_t b) { return gscore[uz(a)] > gscore[uz(b)]; });
      std::vector<T> mask(uz(E), T(0));  // group_mask expanded to experts
      for (index_t j = 0; j < o.topk_expert_groups; ++j)
        for (index_t i = 0; i < per; ++i) mask[uz(gorder[uz(j)] * per + i)] = T(1);
      const T fill = o.group_fill == GroupFill::zero ? T(0) : -std::numeric_limits<T>::infinity();
      for (index_t e = 0; e < E; ++e)  // masked_fill(~group_mask, fill)
        if (mask[uz(e)] == T(0)) c[uz(e)] = fill;
    }
    std::vector<index_t> eorder(uz(E));
    std::iota(eorder.begin(), eorder.end(), index_t{0});
    std::stable_sort(eorder.begin(), eorder.end(), [&](index_t a, index_t b) { return c[uz(a)] > c[uz(b)]; });
    for (index_t j = 0; j < K; ++j) idx[uz(t * K + j)] = eorder[uz(j)];
  }
  return idx;
}

/// One group's load-balancing loss terms, added to `aux` in expert order:
/// one-hot of the choices, max over k, means over tokens (scores normalized
/// per token for sigmoid).
template <class T>
void dense_topk_aux(const std::vector<T>& probs, const std::vector<index_t>& idx, index_t S, index_t E,
                    const TopKOptions& o, T& aux) {
  const index_t K = o.k;
  std::vector<T> tokens_per_expert(uz(E), T(0)), prob_per_expert(uz(E), T(0));
  for (index_t t = 0; t < S; ++t) {
    std::vector<T> m(uz(E), T(0));
    for (index_t j = 0; j < K; ++j) m[uz(idx[uz(t * K + j)])] = T(1);
    T norm = T(0);
    for (index_t e = 0; e < E; ++e) norm += probs[uz(t * E + e)];
    if (o.score == Score::softmax) norm = T(1);
    for (index_t e = 0; e < E; ++e) {
      tokens_per_expert[uz(e)] += m[uz(e)];
      prob_per_expert[uz(e)] += probs[uz(t * E + e)] / norm;
    }
  }
  for (index_t e = 0; e < E; ++e)
    aux += S > 0 ? (tokens_per_expert[uz(e)] / static_cast<T>(S)) * (prob_per_expert[uz(e)] / static_cast<T>(S)) : T(0);
}

/// Each (token, expert)'s slot, -1 if not chosen: the rows that take slots
/// in priority order, expert_mask [rows, E] one-hot, priority =
/// cumsum(mask) * mask - 1 -> [S, E].
template <class T>
std::vector<index_t> dense_topk_priority(const std::vector<T>& probs, const std::vector<index_t>& idx, index_t S,
                                         index_t E, const TopKOptions& o) {
  const index_t K = o.k;
  std::vector<index_t> perm(uz(S));
  std::iota(perm.begin(), perm.end(), index_t{0});
  if (o.priority == Priority::bpr)  // argsort(-top-1 score), stable
    std::stable_sort(perm.begin(), perm.end(), [&](index_t a, index_t b) {
      return probs[uz(a * E + idx[uz(a * K)])] > probs[uz(b * E + idx[uz(b * K)])];
    });
  std::vector<std::pair<index_t, index_t>> rows;  // (token, rank)
  if (o.priority == Priority::token) {
    for (index_t t = 0; t < S; ++t)
      for (index_t j = 0; j < K; ++j) rows.push_back({t, j});
  } else {
    for (index_t j = 0; j < K; ++j)
      for (index_t t : perm) rows.push_back({t, j});
  }
  std::vector<index_t> cum(uz(E), 0);
  std::vector<index_t> priority(uz(S * E), -1);
  for (const auto& [t, j] : rows) {
    for (index_t e = 0; e < E; ++e) {
      const index_t m = idx[uz(t * K + j)] == e ? 1 : 0;
      cum[uz(e)] += m;
      const index_t pr = cum[uz(e)] * m - 1;
      priority[uz(t * E + e)] = std::max(priority[uz(t * E + e)], pr);
    }
  }
  return priority;
}

/// Token t's weights per expert (normalized as o says, times the scale)
/// into its row of the combine tensor [E, C].
template <class T>
void dense_topk_combine(const T* probs, const index_t* idx, const index_t* priority, index_t E, index_t C,
                        const TopKOptions& o, T* combine) {
  const index_t K = o.k;
  std::vector<T> gate(uz(E), T(0));
  for (index_t j = 0; j < K; ++j) gate[uz(idx[j])] = probs[idx[j]];
  if (o.normalize == TopKNormalize::topk) {
    T sum = T(0);
    for (index_t j = 0; j < K; ++j) sum += gate[uz(idx[j])];
    for (auto& v : gate) v /= sum + static_cast<T>(1e-20);
  } else if (o.normalize == TopKNormalize::kept) {
    T sum = T(0);
    for (index_t e = 0; e < E; ++e)
      if (!(priority[e] >= 0 && priority[e] < C)) gate[uz(e)] = T(0);
    for (index_t j = 0; j < K; ++j) sum += gate[uz(idx[j])];
    for (auto& v : gate) v /= std::max(sum, std::numeric_limits<T>::epsilon());
  }
  for (index_t e = 0; e < E; ++e)
    if (priority[e] >= 0 && priority[e] < C) combine[e * C + priority[e]] = gate[uz(e)] * static_cast<T>(o.scale);
}

}  // namespace detail

/// Top-k routing as one-hot masks and cumsums (see the file comment):
/// logits [<batch>, group, experts] -> dispatch and combine [<batch>, group,
/// experts, capacity], aux_loss, z_loss, statistics (the fast router's).
/// Throws as route_into.
template <class T>
DenseRouterResult<T> route_dense(const TensorView<const T>& logits, const TopKOptions& o, const GatingInputs<T>& in,
                                 const MoEDims& dims, const RouteCall& call) {
  const char* op = "topk_routing_dense";
  if (!in.empty()) detail::raise<value_error>(op, ": importance, uniform and gumbel inputs belong to router top2");
  Tensor<T> hold;
  const auto p = detail::router_problem(logits, dims, o.capacity, o.k, op, hold);
  detail::check_topk_options(o, p.E, op);
  const index_t G = p.G, S = p.S, E = p.E, C = p.C, K = o.k;
  DenseRouterResult<T> r;
  r.combine = Tensor<T>(p.batch.with(p.group).with(p.experts).with(p.capacity));
  T aux = T(0);
  for (index_t g = 0; g < G; ++g) {
    const T* L = p.logits.data() + g * S * E;
    std::vector<T> probs(detail::uz(S * E));  // scores [S, E]
    for (index_t t = 0; t < S; ++t) detail::score_row(L + t * E, E, o.score, probs.data() + t * E);
    const std::vector<index_t> idx = detail::dense_topk_select(probs, S, E, o);
    detail::dense_topk_aux(probs, idx, S, E, o, aux);
    const std::vector<index_t> priority = detail::dense_topk_priority(probs, idx, S, E, o);
    for (index_t t = 0; t < S; ++t)
      detail::dense_topk_combine(probs.data() + t * E, idx.data() + t * K, priority.data() + t * E, E, C, o,
                                 r.combine.data() + (g * S + t) * E * C);
  }
  r.aux_loss = G > 0 ? aux * static_cast<T>(E) * static_cast<T>(E) / static_cast<T>(G * E) : T(0);
  r.z_loss = detail::z_loss_of(p.logits, G * S, E);
  r.dispatch = r.combine;
  for (auto& v : r.dispatch) v = v != T(0) ? T(1) : T(0);
  RouterResult<T> fast;
  RouterWorkspace<T> ws;
  route_into(fast, logits, o, in, dims, call, ws);
  r.stats = std::move(fast.stats);  // (load statistics: the plan's)
  return r;
}

/// Top-k routing, dense (see route_dense).
/// Throws as topk_routing.
template <class T>
DenseRouterResult<T> topk_routing_dense(const TensorView<const T>& logits, const TopKOptions& o,
                                        const MoEDims& dims = {}) {
  return route_dense(logits, o, GatingInputs<T>{}, dims, RouteCall{});
}

}  // namespace einmoe
