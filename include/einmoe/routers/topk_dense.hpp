// einmoe/routers/topk_dense.hpp - the top-k router the sources' way: one-hot
// expert masks, cumulative sums for the slot priorities, and dense
// [<batch>, group, experts, expert_capacity] combine and dispatch tensors
// (flaxformer TokensChooseMaskedRouter, DeepSpeed topkgating). The oracle the
// fast topk_routing is tested against; O(S * k * E) per group, plus the
// S * E * C outputs.
//
// Example:
//   auto d = topk_routing_dense(logits, o);   // same options as topk_routing
//   Tensor<float> combine = d.combine;        // [<batch>, group, experts, expert_capacity]
//   Tensor<float> dispatch = d.dispatch;      // 1 where combine routes a token, else 0
//   double aux = d.aux_loss, z = d.z_loss;
#pragma once

#include <algorithm>
#include <numeric>

#include "einmoe/routers/topk.hpp"

namespace einmoe {

/// The dense outputs of a router.
template <class T>
struct DenseRouterResult {
  Tensor<T> combine;   ///< [<batch>, group, experts, expert_capacity]
  Tensor<T> dispatch;  ///< 1 where a token is routed, else 0
  T aux_loss = T(0);
  T z_loss = T(0);
};

/// Top-k routing as one-hot masks and cumsums (see the file comment):
/// logits [<batch>, group, experts] -> dispatch and combine [<batch>, group,
/// experts, capacity], aux_loss, z_loss.
template <class T>
DenseRouterResult<T> topk_routing_dense(const Tensor<T>& logits, const TopKOptions& o) {
  const char* op = "topk_routing_dense";
  const auto p = detail::router_problem(logits, o.group_dim, o.experts_dim, o.capacity, o.capacity_dim, op);
  detail::check_topk_options(o, p.E, op);
  const index_t G = p.G, S = p.S, E = p.E, C = p.C, K = o.k;
  DenseRouterResult<T> r;
  r.combine = Tensor<T>(p.batch.with(p.group).with(p.experts).with(p.capacity));
  T aux = T(0);
  for (index_t g = 0; g < G; ++g) {
    const T* L = p.logits.data() + g * S * E;
    // scores [S, E]
    std::vector<T> probs(detail::uz(S * E));
    for (index_t t = 0; t < S; ++t) detail::score_row(L + t * E, E, o.score, probs.data() + t * E);
    // selection: sort each token's (possibly group-masked) biased scores
    std::vector<index_t> idx(detail::uz(S * K));
    for (index_t t = 0; t < S; ++t) {
      std::vector<T> c(detail::uz(E));
      for (index_t e = 0; e < E; ++e) c[detail::uz(e)] = probs[detail::uz(t * E + e)] + (o.bias.empty() ? T(0) : static_cast<T>(o.bias[detail::uz(e)]));
      if (o.groups > 1) {
        const index_t per = E / o.groups;
        std::vector<T> gscore(detail::uz(o.groups));
        for (index_t gg = 0; gg < o.groups; ++gg) {
          std::vector<T> v(c.begin() + gg * per, c.begin() + (gg + 1) * per);
          std::sort(v.begin(), v.end(), [](T a, T b) { return a > b; });
          gscore[detail::uz(gg)] = v[0] + v[1];
        }
        std::vector<index_t> gorder(detail::uz(o.groups));
        std::iota(gorder.begin(), gorder.end(), index_t{0});
        std::stable_sort(gorder.begin(), gorder.end(), [&](index_t a, index_t b) { return gscore[detail::uz(a)] > gscore[detail::uz(b)]; });
        std::vector<T> mask(detail::uz(E), T(0));  // group_mask expanded to experts
        for (index_t j = 0; j < o.topk_groups; ++j)
          for (index_t i = 0; i < per; ++i) mask[detail::uz(gorder[detail::uz(j)] * per + i)] = T(1);
        for (index_t e = 0; e < E; ++e)
          if (mask[detail::uz(e)] == T(0)) c[detail::uz(e)] = T(0);
      }
      std::vector<index_t> eorder(detail::uz(E));
      std::iota(eorder.begin(), eorder.end(), index_t{0});
      std::stable_sort(eorder.begin(), eorder.end(), [&](index_t a, index_t b) { return c[detail::uz(a)] > c[detail::uz(b)]; });
      for (index_t j = 0; j < K; ++j) idx[detail::uz(t * K + j)] = eorder[detail::uz(j)];
    }
    // load-balancing loss: one-hot of the choices, max over k, means over tokens
    {
      std::vector<T> tokens_per_expert(detail::uz(E), T(0)), prob_per_expert(detail::uz(E), T(0));
      for (index_t t = 0; t < S; ++t) {
        std::vector<T> m(detail::uz(E), T(0));
        for (index_t j = 0; j < K; ++j) m[detail::uz(idx[detail::uz(t * K + j)])] = T(1);
        T norm = T(0);
        for (index_t e = 0; e < E; ++e) norm += probs[detail::uz(t * E + e)];
        if (o.score == Score::softmax) norm = T(1);
        for (index_t e = 0; e < E; ++e) {
          tokens_per_expert[detail::uz(e)] += m[detail::uz(e)];
          prob_per_expert[detail::uz(e)] += probs[detail::uz(t * E + e)] / norm;
        }
      }
      for (index_t e = 0; e < E; ++e)
        aux += S > 0 ? (tokens_per_expert[detail::uz(e)] / static_cast<T>(S)) * (prob_per_expert[detail::uz(e)] / static_cast<T>(S)) : T(0);
    }
    // the order of the rows that take slots: [K * S] (token, rank) pairs
    std::vector<index_t> perm(detail::uz(S));
    std::iota(perm.begin(), perm.end(), index_t{0});
    if (o.priority == Priority::bpr)  // argsort(-top-1 score), stable
      std::stable_sort(perm.begin(), perm.end(), [&](index_t a, index_t b) {
        return probs[detail::uz(a * E + idx[detail::uz(a * K)])] > probs[detail::uz(b * E + idx[detail::uz(b * K)])];
      });
    std::vector<std::pair<index_t, index_t>> rows;  // (token, rank)
    if (o.priority == Priority::token) {
      for (index_t t = 0; t < S; ++t)
        for (index_t j = 0; j < K; ++j) rows.push_back({t, j});
    } else {
      for (index_t j = 0; j < K; ++j)
        for (index_t t : perm) rows.push_back({t, j});
    }
    // expert_mask [rows, E] one-hot; priority = cumsum(mask) * mask - 1
    std::vector<index_t> cum(detail::uz(E), 0);
    std::vector<index_t> priority(detail::uz(S * E), -1);  // per (token, expert): its slot, -1 if not chosen
    for (const auto& [t, j] : rows) {
      for (index_t e = 0; e < E; ++e) {
        const index_t m = idx[detail::uz(t * K + j)] == e ? 1 : 0;
        cum[detail::uz(e)] += m;
        const index_t pr = cum[detail::uz(e)] * m - 1;
        priority[detail::uz(t * E + e)] = std::max(priority[detail::uz(t * E + e)], pr);
      }
    }
    // weights per (token, expert), then the dense tensors
    for (index_t t = 0; t < S; ++t) {
      std::vector<T> gate(detail::uz(E), T(0));
      for (index_t j = 0; j < K; ++j) {
        const index_t e = idx[detail::uz(t * K + j)];
        gate[detail::uz(e)] = probs[detail::uz(t * E + e)];
      }
      if (o.normalize == TopKNormalize::topk) {
        T sum = T(0);
        for (index_t j = 0; j < K; ++j) sum += gate[detail::uz(idx[detail::uz(t * K + j)])];
        for (auto& v : gate) v /= sum + static_cast<T>(1e-20);
      } else if (o.normalize == TopKNormalize::kept) {
        T sum = T(0);
        for (index_t e = 0; e < E; ++e) {
          const index_t pr = priority[detail::uz(t * E + e)];
          if (!(pr >= 0 && pr < C)) gate[detail::uz(e)] = T(0);
        }
        for (index_t j = 0; j < K; ++j) sum += gate[detail::uz(idx[detail::uz(t * K + j)])];
        for (auto& v : gate) v /= std::max(sum, std::numeric_limits<T>::epsilon());
      }
      for (index_t e = 0; e < E; ++e) {
        const index_t pr = priority[detail::uz(t * E + e)];
        if (pr >= 0 && pr < C) r.combine[((g * S + t) * E + e) * C + pr] = gate[detail::uz(e)] * static_cast<T>(o.scale);
      }
    }
  }
  r.aux_loss = G > 0 ? aux * static_cast<T>(E) * static_cast<T>(E) / static_cast<T>(G * E) : T(0);
  r.z_loss = detail::z_loss_of(p.logits, G * S, E);
  r.dispatch = r.combine;
  for (auto& v : r.dispatch) v = v != T(0) ? T(1) : T(0);
  return r;
}

}  // namespace einmoe
