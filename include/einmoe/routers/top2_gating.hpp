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
//   o.capacity = CapacitySpec::fixed(160);
//   RouterResult<float> r = top2_gating(logits, o);
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
#include "einmoe/ops/index.hpp"
#include "einmoe/ops/softmax.hpp"
#include "einmoe/routers/router.hpp"
#include "einmoe/routers/top2_options.hpp"

namespace einmoe {
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

template <class T>
index_t argmax_row(const T* x, index_t n, Ties ties = Ties::lowest) {
  index_t best = 0;
  for (index_t i = 1; i < n; ++i)
    if (replaces_best(x[i], x[best], ties)) best = i;
  return best;
}

/// Per-group loss sums of the top-2 gatings, in the workspace: [G, E] sums
/// over each group's tokens per expert, and [G] importance sums.
template <class T>
struct Top2Sums {
  T *proxy_1, *mask_1, *proxy_2, *mask_2, *importance;
};
template <class T>
Top2Sums<T> top2_sums(RouterWorkspace<T>& ws, index_t G, index_t E) {
  for (int i = 0; i < 4; ++i) ws.group_values(i).assign(uz(G * E), T(0));
  ws.group_values(4).assign(uz(G), T(0));
  return {ws.group_values(0).data(), ws.group_values(1).data(), ws.group_values(2).data(), ws.group_values(3).data(),
          ws.group_values(4).data()};
}

/// What both top-2 gatings set up before their groups run: the plan reset
/// for k = 2, the loss sums and slot counts in the workspace, the call's
/// draws, and one thread scratch per thread.
template <class T>
struct Top2Run {
  Top2Sums<T> sums;
  GroupCounts counts;
  Draws<T> draws;
};
template <class T>
Top2Run<T> begin_top2(RouterResult<T>& r, const GatingProblem<T>& p, const Top2Options& opt, const RouteCall& call,
                      RouterWorkspace<T>& ws) {
  r.plan.reset(p.batch, p.group, p.experts, p.capacity, 2);
  Top2Run<T> run{top2_sums(ws, p.G, p.E), group_counts(ws, p.G), top2_draws(p, opt, call)};
  ws.prepare();
  return run;
}

/// One group's two choices per token (thread scratch): the experts, their
/// gates, and whether the token wants each.
template <class T>
struct Top2Choices {
  index_t *index1, *index2;
  T *gate1, *gate2;
  char *m1, *m2;
};
template <class T>
Top2Choices<T> top2_choices(typename RouterWorkspace<T>::Thread& th, index_t S) {
  return {th.indices(0, S), th.indices(1, S), th.values(0, S), th.values(1, S), th.flags(0, S), th.flags(1, S)};
}

/// Hands out group g's slots as the sources do - first choices in token
/// order, then second choices after all kept first choices; a choice is
/// kept if its slot < C - and writes the kept ones into the plan. The kept
/// gates (dropped ones are 0) pass through finish(g1, g2), the
/// renormalization after capacity. Counts wanted and kept choices into gc.
template <class T, class Finish>
void assign_top2_slots(RoutingPlan<T>& plan, index_t g, index_t S, index_t E, index_t C, const Top2Choices<T>& ch,
                       typename RouterWorkspace<T>::Thread& th, const GroupCounts& gc, Finish&& finish) {
  std::int32_t* taken = plan.taken.data() + g * E;
  index_t* count1 = th.indices(2, E);
  index_t* count2 = th.indices(3, E);
  index_t* pos1 = th.indices(4, S);
  index_t* pos2 = th.indices(5, S);
  std::fill(count1, count1 + E, 0);
  std::fill(count2, count2 + E, 0);
  for (index_t s = 0; s < S; ++s) {
    pos1[s] = pos2[s] = -1;
    if (!ch.m1[s]) continue;
    ++gc.wanted1[g];
    const index_t pos = count1[ch.index1[s]]++;
    if (pos < C) pos1[s] = pos, ++gc.kept1[g];
  }
  for (index_t e = 0; e < E; ++e) taken[e] = static_cast<std::int32_t>(std::min(count1[e], C));
  for (index_t s = 0; s < S; ++s) {
    if (!ch.m2[s]) continue;
    ++gc.wanted2[g];
    const index_t e = ch.index2[s];
    const index_t pos = count2[e]++ + std::min(count1[e], C);
    if (pos < C) pos2[s] = pos, ++gc.kept2[g];
  }
  for (index_t s = 0; s < S; ++s) {
    const index_t t = g * S + s;
    T g1 = pos1[s] >= 0 ? ch.gate1[s] : T(0);
    T g2 = pos2[s] >= 0 ? ch.gate2[s] : T(0);
    finish(g1, g2);
    const index_t pos[2] = {pos1[s], pos2[s]};
    const index_t idx[2] = {ch.index1[s], ch.index2[s]};
    const T gate[2] = {g1, g2};
    for (index_t j = 0; j < 2; ++j) {
      if (pos[j] < 0) continue;
      const auto entry = uz(t * 2 + j);
      plan.expert[entry] = static_cast<std::int32_t>(idx[j]);
      plan.slot[entry] = static_cast<std::int32_t>(pos[j]);
      plan.weight[entry] = gate[j];
      plan.slot_entry[uz(plan.slot_index(g, idx[j], pos[j]))] = static_cast<index_t>(entry);
      if (j == 1) ++taken[idx[j]];
    }
  }
}

/// Finishes a top-2 result from the per-group sums: the balancing loss (per
/// group, then over groups in order, as top2_aux_loss; with `denominators`,
/// both group means are divided by mean(importance) + 1e-6, lingvo's
/// normalize-after rule) and the statistics.
template <class T>
void finish_top2(RouterResult<T>& r, const Top2Sums<T>& L, index_t G, index_t S, index_t E, bool second_place_loss,
                 bool denominators, const GroupCounts& gc) {
  r.aux_loss = r.z_loss = T(0);
  r.parts.aux.clear();
  r.parts.aux2.clear();
  r.parts.z.clear();
  if (S > 0) {
    // Divisions, not reciprocal multiplies, exactly as the dense form's means.
    const T Sf = static_cast<T>(S);
    r.parts.aux.assign(uz(G), T(0));
    if (second_place_loss) r.parts.aux2.assign(uz(G), T(0));
    for (index_t g = 0; g < G; ++g) {
      const T denom = L.importance[g] / Sf + T(1e-6);
      T total = T(0), total2 = T(0);
      for (index_t e = 0; e < E; ++e) {
        const index_t i = g * E + e;
        T proxy = L.proxy_1[i] / Sf, density = L.mask_1[i] / Sf;
        if (denominators) proxy /= denom, density /= denom;
        total += proxy * density;
        if (second_place_loss) total2 += (L.proxy_2[i] / Sf) * (L.mask_2[i] / Sf);
      }
      r.parts.aux[uz(g)] = total;
      if (second_place_loss) r.parts.aux2[uz(g)] = total2;
    }
    r.aux_loss = top2_aux_loss(r.parts, G, E);
  }
  auto& st = r.stats;
  sum_stats(st, r.plan, gc);
  st.first_choices.assign(uz(E), 0);
  for (index_t g = 0; g < G; ++g)
    for (index_t e = 0; e < E; ++e) st.first_choices[uz(e)] += static_cast<index_t>(L.mask_1[g * E + e]);
  finish_density(st, G * S);
}

/// Whether the second choice (wanted: `want`, gate g2) survives the second
/// policy: none drops it, threshold keeps it above the threshold, random
/// keeps it with probability g2 / threshold (token t's uniform draw); all
/// and sampling keep it.
template <class T>
bool second_policy_keeps(const Top2Options& opt, bool want, T g2, const Draws<T>& draws, index_t t) {
  switch (opt.policy) {
    case SecondPolicy::none: return false;
    case SecondPolicy::threshold: return want && g2 > static_cast<T>(opt.threshold);
    case SecondPolicy::random: return want && draws.uniform(t) < g2 / static_cast<T>(std::max(opt.threshold, 1e-9));
    default: return want;
  }
}

/// One token of top-2 gating (steps 1-6 of the file comment): its choices
/// into ch[s], its loss terms into the group's sums.
template <class T>
void top2_token(const T* lg, T imp, const Top2Options& opt, const Draws<T>& draws, index_t t, index_t E, T* raw,
                T* without, T* noised, const Top2Choices<T>& ch, index_t s, T* proxy_1, T* mask_1, T* proxy_2,
                T* mask_2, T& importance_sum) {
  const T very_negative = T(-0.7) * std::numeric_limits<T>::max();
  const T eps_before = T(1e-9);
  softmax_row(lg, raw, E, 1);
  // 1st choice
  const index_t i1 = argmax_row(raw, E, opt.ties);
  const bool has1 = imp == T(1);
  T g1 = has1 ? raw[i1] : T(0);
  // 2nd choice
  for (index_t e = 0; e < E; ++e) without[e] = (has1 && e == i1) ? T(0) : raw[e];
  index_t i2;
  if (opt.policy == SecondPolicy::sampling) {
    draws.gumbel_row(t * E, E, noised);
    for (index_t e = 0; e < E; ++e) noised[e] += (has1 && e == i1) ? very_negative : lg[e];
    i2 = argmax_row(noised, E, opt.ties);
  } else {
    i2 = argmax_row(without, E, opt.ties);
  }
  T g2 = without[i2];
  bool has2 = imp > T(0);
  if (opt.normalize == Normalize::before) {
    const T d = g1 + g2 + eps_before;
    g1 /= d;
    g2 /= d;
  }
  // balancing-loss sums (before policy and capacity, as the sources)
  for (index_t e = 0; e < E; ++e) proxy_1[e] += has1 ? raw[e] : T(0);
  if (has1) mask_1[i1] += T(1);
  importance_sum += imp;
  if (opt.second_place_loss) {
    T z = T(0);
    for (index_t e = 0; e < E; ++e) z += without[e];
    const T inv = T(1) / (z + eps_before);
    for (index_t e = 0; e < E; ++e) proxy_2[e] += without[e] * inv;
    if (has2) mask_2[i2] += T(1);
  }
  has2 = second_policy_keeps(opt, has2, g2, draws, t);
  ch.index1[s] = i1, ch.index2[s] = i2;
  ch.gate1[s] = g1, ch.gate2[s] = g2;
  ch.m1[s] = has1, ch.m2[s] = has2;
}

}  // namespace detail

/// Top-2 gating into `r`, reusing its and the workspace's memory (a
/// steady-state call allocates nothing): logits [<batch>, group, experts]
/// (+ importance / uniform [<batch>, group], gumbel [<batch>, group,
/// experts]) -> r.plan (k = 2), r.aux_loss, r.stats; `call` picks the draws
/// of policies random and sampling when none are given. Throws shape_error
/// for missing or mismatched dims, value_error for bad options or logits.
template <class T>
void route_into(RouterResult<T>& r, const TensorView<const T>& logits, const Top2Options& opt,
                const GatingInputs<T>& in, const MoEDims& dims, const RouteCall& call, RouterWorkspace<T>& ws) {
  detail::GatingProblem<T> p;
  detail::make_problem(p, logits, opt, in, dims, "top2_gating", ws.logits_hold());
  const index_t G = p.G, S = p.S, E = p.E, C = p.C;
  const detail::Top2Run<T> run = detail::begin_top2(r, p, opt, call, ws);
  r.choice.resize(r.plan.expert.size());
  detail::parallel_items(G, [&](index_t g) {
    auto& th = ws.thread();
    const detail::Top2Choices<T> ch = detail::top2_choices<T>(th, S);
    T* raw = th.values(2, E);
    T* without = th.values(3, E);
    T* noised = th.values(4, E);
    const index_t ge = g * E;
    for (index_t s = 0; s < S; ++s) {
      const index_t t = g * S + s;
      const T imp = p.importance ? (*p.importance)[t] : T(1);
      detail::top2_token(p.logits.data() + t * E, imp, opt, run.draws, t, E, raw, without, noised, ch, s,
                         run.sums.proxy_1 + ge, run.sums.mask_1 + ge, run.sums.proxy_2 + ge, run.sums.mask_2 + ge,
                         run.sums.importance[g]);
      r.choice[detail::uz(t * 2)] = static_cast<std::int32_t>(ch.index1[s]);
      r.choice[detail::uz(t * 2 + 1)] = static_cast<std::int32_t>(ch.index2[s]);
    }
    detail::assign_top2_slots(r.plan, g, S, E, C, ch, th, run.counts, [&](T& a, T& b) {
      if (opt.normalize == Normalize::after) {
        const T d = a + b;
        if (d > T(0)) a /= d, b /= d;
      }
    });
  });
  detail::finish_top2(r, run.sums, G, S, E, opt.second_place_loss, opt.normalize == Normalize::after, run.counts);
}

/// Top-2 gating: logits [<batch>, group, experts] (+ the optional inputs of
/// GatingInputs) -> sparse routing plan (k = 2), balancing loss, statistics.
/// Throws as route_into.
template <class T>
RouterResult<T> top2_gating(const TensorView<const T>& logits, const Top2Options& opt, const GatingInputs<T>& in = {},
                            const MoEDims& dims = {}) {
  RouterResult<T> r;
  RouterWorkspace<T> ws;
  route_into(r, logits, opt, in, dims, RouteCall{}, ws);
  return r;
}

}  // namespace einmoe
