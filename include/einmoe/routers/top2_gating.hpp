// einmoe/routers/top2_gating.hpp - top-2 gating with capacity, the fast way.
//
// Same numbers as Mesh TF's _top_2_gating and lingvo's Top2GatingOnLogits
// (see top2_gating_dense.hpp for the literal one-hot formulation, which the
// tests hold this against), computed in O(G*S*E) time without any
// [S, E, C] tensor: per group, one pass picks both experts and accumulates
// the balancing loss, and a second pass hands out slots with per-expert
// counters (the exclusive cumsum of one-hot masks, done as counting).
//
// Example:
//   // logits: [batch=4, group=1024, experts=16]
//   Top2Options o;
//   o.capacity = Dim{"expert_capacity", 160};
//   auto r = top2_gating(logits, o);
//   const RoutingPlan<float>& plan = r.plan;   // sparse routing
//   double aux = r.aux_loss;                   // balancing loss (scalar)
//   const RoutingStats& stats = r.stats;       // per-expert load, dropped fractions
//
// Per group, for each token (see the routing issue for the full statement):
//  1. raw = softmax(logits) over experts.
//  2. index_1 = argmax raw (ties -> lowest, or highest with opt.ties as
//     Mesh TF's mtf.top_1 before Sept. 2019); gate_1 = raw[index_1]; both
//     dropped where importance != 1.
//  3. index_2 = argmax of raw without index_1 (or, policy sampling, argmax of
//     logits + Gumbel with the first expert's logit at -0.7 * max(T));
//     gate_2 = raw[index_2]; dropped where importance <= 0.
//  4. normalize before: gate_k /= gate_1 + gate_2 + 1e-9.
//  5. aux loss = mean_{batch,experts}(mean_group(raw * [imp = 1]) *
//     mean_group(mask_1)) * E^2 (+ the second-place loss; with normalize
//     after, both group means are divided by mean_group(importance) + 1e-6).
//  6. the second policy drops second choices.
//  7. slots: first choices in token order, then second choices after all
//     kept first choices; a choice is kept if its slot < C.
//  8. gates of dropped choices are 0; normalize after: gate_k /= their sum
//     where it is > 0.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "einmoe/core/threads.hpp"
#include "einmoe/routers/gating_options.hpp"
#include "einmoe/routers/routing_plan.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/ops/softmax.hpp"

namespace einmoe {

/// The result of top-2 gating: the sparse plan, the balancing loss, and load
/// statistics.
template <class T>
struct Top2Result {
  RoutingPlan<T> plan;
  T aux_loss = T(0);
  RoutingStats stats;
  LossParts<T> parts;  ///< aux_loss in per-group pieces (top2_aux_loss finishes them)
};

namespace detail {
/// aux_loss from per-group pieces of G groups in total, E experts.
template <class T>
T top2_aux_loss(const LossParts<T>& parts, index_t G, index_t E) {
  if (G == 0) return T(0);
  const T Ef = static_cast<T>(E), n = static_cast<T>(G * E);
  T total = T(0), total2 = T(0);
  for (T a : parts.aux) total += a;
  T r = total / n * (Ef * Ef);
  if (!parts.aux2.empty()) {
    for (T a : parts.aux2) total2 += a;
    r += total2 / n * (Ef * Ef) * T(0.5);
  }
  return r;
}
}  // namespace detail

namespace detail {

template <class T>
index_t argmax_row(const T* x, index_t n, Ties ties = Ties::lowest) {
  index_t best = 0;
  for (index_t i = 1; i < n; ++i)
    if (replaces_best(x[i], x[best], ties)) best = i;
  return best;
}

/// Hands out group g's slots as the sources do - first choices in token
/// order, then second choices after all kept first choices; a choice is
/// kept if its slot < C - and writes the kept ones into the plan. m1 / m2
/// say which tokens want a first / second expert; the kept gates (dropped
/// ones are 0) pass through finish(g1, g2), the renormalization after
/// capacity. Adds the wanted and kept counts to w1, w2, k1, k2.
template <class T, class Finish>
void assign_top2_slots(RoutingPlan<T>& plan, index_t g, index_t S, index_t E, index_t C,
                       const std::vector<index_t>& index1, const std::vector<index_t>& index2,
                       const std::vector<char>& m1, const std::vector<char>& m2, const std::vector<T>& gate1,
                       const std::vector<T>& gate2, index_t& w1, index_t& w2, index_t& k1, index_t& k2,
                       Finish&& finish) {
  std::int32_t* fill = plan.fill.data() + g * E;
  std::vector<index_t> count1(uz(E), 0), count2(uz(E), 0);
  std::vector<index_t> pos1(uz(S), -1), pos2(uz(S), -1);
  for (index_t s = 0; s < S; ++s) {
    if (!m1[uz(s)]) continue;
    ++w1;
    const index_t pos = count1[uz(index1[uz(s)])]++;
    if (pos < C) pos1[uz(s)] = pos, ++k1;
  }
  for (index_t e = 0; e < E; ++e) fill[e] = static_cast<std::int32_t>(std::min(count1[uz(e)], C));
  for (index_t s = 0; s < S; ++s) {
    if (!m2[uz(s)]) continue;
    ++w2;
    const index_t e = index2[uz(s)];
    const index_t pos = count2[uz(e)]++ + std::min(count1[uz(e)], C);
    if (pos < C) pos2[uz(s)] = pos, ++k2;
  }
  for (index_t s = 0; s < S; ++s) {
    const index_t t = g * S + s;
    T g1 = pos1[uz(s)] >= 0 ? gate1[uz(s)] : T(0);
    T g2 = pos2[uz(s)] >= 0 ? gate2[uz(s)] : T(0);
    finish(g1, g2);
    const index_t pos[2] = {pos1[uz(s)], pos2[uz(s)]};
    const index_t idx[2] = {index1[uz(s)], index2[uz(s)]};
    const T gate[2] = {g1, g2};
    for (index_t j = 0; j < 2; ++j) {
      if (pos[j] < 0) continue;
      const auto entry = uz(t * 2 + j);
      plan.expert[entry] = static_cast<std::int32_t>(idx[j]);
      plan.slot[entry] = static_cast<std::int32_t>(pos[j]);
      plan.weight[entry] = gate[j];
      plan.slot_entry[uz(plan.slot_index(g, idx[j], pos[j]))] = static_cast<index_t>(entry);
      if (j == 1) ++fill[idx[j]];
    }
  }
}

/// Per-group loss accumulators: sums over the group's tokens, per expert.
template <class T>
struct GroupLoss {
  std::vector<T> proxy_1, mask_1, proxy_2, mask_2;
  T importance_sum = T(0);
  /// Zeroed sums for E experts.
  void reset(index_t E) {
    for (auto* v : {&proxy_1, &mask_1, &proxy_2, &mask_2}) v->assign(uz(E), T(0));
    importance_sum = T(0);
  }
};

/// Finishes a top-2 result from the per-group sums: the balancing loss (per
/// group, then over groups in order, as top2_aux_loss; with `denominators`,
/// both group means are divided by mean(importance) + 1e-6, lingvo's
/// normalize-after rule) and the statistics.
template <class T>
void finish_top2(Top2Result<T>& r, const std::vector<GroupLoss<T>>& losses, index_t G, index_t S, index_t E,
                 bool second_place_loss, bool denominators, const std::vector<index_t>& wanted1,
                 const std::vector<index_t>& wanted2, const std::vector<index_t>& kept1, const std::vector<index_t>& kept2) {
  if (S > 0) {
    // Divisions, not reciprocal multiplies, exactly as the dense form's means.
    const T Sf = static_cast<T>(S);
    r.parts.aux.assign(uz(G), T(0));
    if (second_place_loss) r.parts.aux2.assign(uz(G), T(0));
    for (index_t g = 0; g < G; ++g) {
      const auto& L = losses[uz(g)];
      const T denom = L.importance_sum / Sf + T(1e-6);
      T total = T(0), total2 = T(0);
      for (index_t e = 0; e < E; ++e) {
        T proxy = L.proxy_1[uz(e)] / Sf, density = L.mask_1[uz(e)] / Sf;
        if (denominators) proxy /= denom, density /= denom;
        total += proxy * density;
        if (second_place_loss) total2 += (L.proxy_2[uz(e)] / Sf) * (L.mask_2[uz(e)] / Sf);
      }
      r.parts.aux[uz(g)] = total;
      if (second_place_loss) r.parts.aux2[uz(g)] = total2;
    }
    r.aux_loss = top2_aux_loss(r.parts, G, E);
  }
  auto& st = r.stats;
  sum_stats(st, r.plan, wanted1, wanted2, kept1, kept2);
  st.first_choices.assign(uz(E), 0);
  for (index_t g = 0; g < G; ++g)
    for (index_t e = 0; e < E; ++e) st.first_choices[uz(e)] += static_cast<index_t>(losses[uz(g)].mask_1[uz(e)]);
  finish_density(st, G * S);
}

}  // namespace detail

/// Top-2 gating: logits [<batch>, group, experts] -> sparse routing plan.
template <class T>
Top2Result<T> top2_gating(const Tensor<T>& logits, const Top2Options& opt, const GatingInputs<T>& in = {}) {
  const auto p = detail::make_problem(logits, opt, in, "top2_gating");
  const index_t G = p.G, S = p.S, E = p.E, C = p.C;
  Top2Result<T> r;
  r.plan.reset(p.batch, p.group, p.experts, p.capacity, 2);
  auto& plan = r.plan;

  std::vector<detail::GroupLoss<T>> losses(detail::uz(G));
  std::vector<index_t> wanted1(detail::uz(G)), wanted2(detail::uz(G)), kept1(detail::uz(G)), kept2(detail::uz(G));
  const T very_negative = T(-0.7) * std::numeric_limits<T>::max();
  const T eps_before = T(1e-9);

#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (G > 1)
#endif
  for (index_t g = 0; g < G; ++g) {
    std::vector<T> raw(detail::uz(E)), without(detail::uz(E)), noised(detail::uz(E));
    std::vector<index_t> index1(detail::uz(S)), index2(detail::uz(S));
    std::vector<T> gate1(detail::uz(S)), gate2(detail::uz(S));
    std::vector<char> m1(detail::uz(S)), m2(detail::uz(S));
    auto& L = losses[detail::uz(g)];
    L.reset(E);

    for (index_t s = 0; s < S; ++s) {
      const index_t t = g * S + s;
      const T* lg = p.logits.data() + t * E;
      detail::softmax_row(lg, raw.data(), E, 1);
      const T imp = p.importance ? (*p.importance)[t] : T(1);
      // 1st choice
      const index_t i1 = detail::argmax_row(raw.data(), E, opt.ties);
      const bool has1 = imp == T(1);
      T g1 = has1 ? raw[detail::uz(i1)] : T(0);
      // 2nd choice
      for (index_t e = 0; e < E; ++e) without[detail::uz(e)] = (has1 && e == i1) ? T(0) : raw[detail::uz(e)];
      index_t i2;
      if (opt.policy == SecondPolicy::sampling) {
        const T* gu = p.gumbel->data() + t * E;
        for (index_t e = 0; e < E; ++e)
          noised[detail::uz(e)] = ((has1 && e == i1) ? very_negative : lg[e]) + gu[e];
        i2 = detail::argmax_row(noised.data(), E, opt.ties);
      } else {
        i2 = detail::argmax_row(without.data(), E, opt.ties);
      }
      T g2 = without[detail::uz(i2)];
      bool has2 = imp > T(0);
      if (opt.normalize == Normalize::before) {
        const T d = g1 + g2 + eps_before;
        g1 /= d;
        g2 /= d;
      }
      // balancing-loss sums (before policy and capacity, as the sources)
      for (index_t e = 0; e < E; ++e) L.proxy_1[detail::uz(e)] += has1 ? raw[detail::uz(e)] : T(0);
      if (has1) L.mask_1[detail::uz(i1)] += T(1);
      L.importance_sum += imp;
      if (opt.second_place_loss) {
        T z = T(0);
        for (index_t e = 0; e < E; ++e) z += without[detail::uz(e)];
        const T inv = T(1) / (z + eps_before);
        for (index_t e = 0; e < E; ++e) L.proxy_2[detail::uz(e)] += without[detail::uz(e)] * inv;
        if (has2) L.mask_2[detail::uz(i2)] += T(1);
      }
      // second policy
      switch (opt.policy) {
        case SecondPolicy::none: has2 = false; break;
        case SecondPolicy::threshold: has2 = has2 && g2 > static_cast<T>(opt.threshold); break;
        case SecondPolicy::random:
          has2 = has2 && (*p.uniform)[t] < g2 / static_cast<T>(std::max(opt.threshold, 1e-9));
          break;
        default: break;
      }
      index1[detail::uz(s)] = i1;
      index2[detail::uz(s)] = i2;
      gate1[detail::uz(s)] = g1;
      gate2[detail::uz(s)] = g2;
      m1[detail::uz(s)] = has1;
      m2[detail::uz(s)] = has2;
    }

    index_t w1 = 0, w2 = 0, k1 = 0, k2 = 0;
    detail::assign_top2_slots(plan, g, S, E, C, index1, index2, m1, m2, gate1, gate2, w1, w2, k1, k2, [&](T& a, T& b) {
      if (opt.normalize == Normalize::after) {
        const T d = a + b;
        if (d > T(0)) a /= d, b /= d;
      }
    });
    wanted1[detail::uz(g)] = w1, wanted2[detail::uz(g)] = w2, kept1[detail::uz(g)] = k1, kept2[detail::uz(g)] = k2;
  }

  detail::finish_top2(r, losses, G, S, E, opt.second_place_loss, opt.normalize == Normalize::after, wanted1, wanted2,
                      kept1, kept2);
  return r;
}

}  // namespace einmoe
