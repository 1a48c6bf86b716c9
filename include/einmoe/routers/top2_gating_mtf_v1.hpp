// einmoe/routers/top2_gating_mtf_v1.hpp - the other _top_2_gating in the
// Mesh TF sources: the version with max_experts [batch, group].
//
//   Top2Options o;
//   o.capacity = Dim{"expert_capacity", 8};
//   o.ties = Ties::highest;                       // mtf.top_1 of that era
//   auto r = top2_gating_mtf_v1(logits, o, &max_experts);   // fast: a RoutingPlan
//   auto d = top2_gating_mtf_v1_dense(logits, o, &max_experts);  // the oracle
//
// It differs from top2_gating (Mesh TF's later version, lingvo) in four ways,
// each transcribed from the source:
//  - max_experts [<batch>, group] (optional) limits each token: geq1 =
//    [max_experts >= 1] multiplies mask_1 and the raw gates (the loss proxy),
//    geq2 = [max_experts >= 2] multiplies mask_2 and gates_without_top_1.
//  - Policies threshold and random compare the raw gate_2 (no
//    renormalization happens before them); sampling does not exist here.
//  - The two gates are renormalized after capacity, always with + 1e-9:
//    gate_k /= (gate_1 + gate_2 + 1e-9), dropped gates being 0.
//  - The balancing loss has no density denominators:
//    mean(mean_group(raw * geq1) * mean_group(mask_1)) * E^2 (+ the
//    second-place loss, 0.5 * E^2 * mean(mean_group(normalized) *
//    mean_group(mask_2)) with mask_2 before the policy).
// Of Top2Options it uses capacity (or capacity_factor), the dim names,
// policy (all, none, threshold, random), threshold, second_place_loss, seed
// and ties; normalize is not used.
//
// Shapes: logits [<batch>, group, experts]; max_experts and uniform draws
// [<batch>, group]; the plan / dense tensors as top2_gating's.
#pragma once

#include <algorithm>
#include <vector>

#include "einmoe/routers/gating_options.hpp"
#include "einmoe/routers/routing_plan.hpp"
#include "einmoe/routers/top2_gating.hpp"
#include "einmoe/routers/top2_gating_dense.hpp"

namespace einmoe {

namespace detail {
template <class T>
GatingProblem<T> mtf_v1_problem(const Tensor<T>& logits, const Top2Options& o, const Tensor<T>* max_experts,
                                const Tensor<T>* uniform, const char* op) {
  if (o.policy == SecondPolicy::sampling)
    raise<value_error>(op, ": policy sampling is not part of this gating (all, none, threshold, random)");
  GatingInputs<T> in;  // max_experts travels in the importance slot (same shape and checks)
  if (max_experts) in.importance = *max_experts;
  if (uniform) in.uniform = *uniform;
  return make_problem(logits, o, in, op, "max_experts");
}
}  // namespace detail

/// Mesh TF's _top_2_gating with max_experts, fast: logits [<batch>, group,
/// experts] (+ max_experts [<batch>, group], uniform draws [<batch>, group]
/// for policy random, else drawn from o.seed) -> plan, loss, statistics.
template <class T>
Top2Result<T> top2_gating_mtf_v1(const Tensor<T>& logits, const Top2Options& opt, const Tensor<T>* max_experts = nullptr,
                                 const Tensor<T>* uniform = nullptr) {
  const auto p = detail::mtf_v1_problem(logits, opt, max_experts, uniform, "top2_gating_mtf_v1");
  const index_t G = p.G, S = p.S, E = p.E, C = p.C;
  Top2Result<T> r;
  r.plan.reset(p.batch, p.group, p.experts, p.capacity, 2);
  auto& plan = r.plan;
  std::vector<detail::GroupLoss<T>> losses(detail::uz(G));
  std::vector<index_t> wanted1(detail::uz(G)), wanted2(detail::uz(G)), kept1(detail::uz(G)), kept2(detail::uz(G));
  const T eps = T(1e-9);
  const T thr = static_cast<T>(std::max(opt.threshold, 1e-9));

#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (G > 1)
#endif
  for (index_t g = 0; g < G; ++g) {
    std::vector<T> raw(detail::uz(E)), without(detail::uz(E));
    std::vector<index_t> index1(detail::uz(S)), index2(detail::uz(S));
    std::vector<T> gate1(detail::uz(S)), gate2(detail::uz(S));
    std::vector<char> m1(detail::uz(S)), m2(detail::uz(S));
    auto& L = losses[detail::uz(g)];
    L.proxy_1.assign(detail::uz(E), T(0));
    L.mask_1.assign(detail::uz(E), T(0));
    L.proxy_2.assign(detail::uz(E), T(0));
    L.mask_2.assign(detail::uz(E), T(0));
    for (index_t s = 0; s < S; ++s) {
      const index_t t = g * S + s;
      detail::softmax_row(p.logits.data() + t * E, raw.data(), E, 1);
      const index_t i1 = detail::argmax_row(raw.data(), E, opt.ties);
      for (index_t e = 0; e < E; ++e) without[detail::uz(e)] = e == i1 ? T(0) : raw[detail::uz(e)];
      const index_t i2 = detail::argmax_row(without.data(), E, opt.ties);
      const T me = p.importance ? (*p.importance)[t] : T(2);
      const bool geq1 = me >= T(1), geq2 = me >= T(2);
      // balancing-loss sums (before the policy and capacity)
      for (index_t e = 0; e < E; ++e) L.proxy_1[detail::uz(e)] += geq1 ? raw[detail::uz(e)] : T(0);
      if (geq1) L.mask_1[detail::uz(i1)] += T(1);
      if (opt.second_place_loss) {
        T sum_w = T(0);
        for (index_t e = 0; e < E; ++e) sum_w += geq2 ? without[detail::uz(e)] : T(0);
        const T denom = sum_w + eps;
        for (index_t e = 0; e < E; ++e) L.proxy_2[detail::uz(e)] += (geq2 ? without[detail::uz(e)] : T(0)) / denom;
        if (geq2) L.mask_2[detail::uz(i2)] += T(1);
      }
      const T g2 = without[detail::uz(i2)];
      bool use2 = geq2;
      switch (opt.policy) {
        case SecondPolicy::none: use2 = false; break;
        case SecondPolicy::threshold: use2 = use2 && g2 > static_cast<T>(opt.threshold); break;
        case SecondPolicy::random: use2 = use2 && (*p.uniform)[t] < g2 / thr; break;
        default: break;
      }
      index1[detail::uz(s)] = i1, index2[detail::uz(s)] = i2;
      gate1[detail::uz(s)] = raw[detail::uz(i1)], gate2[detail::uz(s)] = g2;
      m1[detail::uz(s)] = geq1, m2[detail::uz(s)] = use2;
    }
    // Slots: first choices in token order, then second choices.
    std::int32_t* fill = plan.fill.data() + g * E;
    std::vector<index_t> count1(detail::uz(E), 0), count2(detail::uz(E), 0);
    std::vector<index_t> pos1(detail::uz(S), -1), pos2(detail::uz(S), -1);
    index_t w1 = 0, w2 = 0, k1 = 0, k2 = 0;
    for (index_t s = 0; s < S; ++s) {
      if (!m1[detail::uz(s)]) continue;
      ++w1;
      const index_t pos = count1[detail::uz(index1[detail::uz(s)])]++;
      if (pos < C) pos1[detail::uz(s)] = pos, ++k1;
    }
    for (index_t e = 0; e < E; ++e) fill[e] = static_cast<std::int32_t>(std::min(count1[detail::uz(e)], C));
    for (index_t s = 0; s < S; ++s) {
      if (!m2[detail::uz(s)]) continue;
      ++w2;
      const index_t e = index2[detail::uz(s)];
      const index_t pos = count2[detail::uz(e)]++ + std::min(count1[detail::uz(e)], C);
      if (pos < C) pos2[detail::uz(s)] = pos, ++k2;
    }
    for (index_t s = 0; s < S; ++s) {
      const index_t t = g * S + s;
      T g1 = pos1[detail::uz(s)] >= 0 ? gate1[detail::uz(s)] : T(0);
      T g2 = pos2[detail::uz(s)] >= 0 ? gate2[detail::uz(s)] : T(0);
      const T d = g1 + g2 + eps;  // after capacity, always (the source)
      g1 /= d, g2 /= d;
      const index_t pos[2] = {pos1[detail::uz(s)], pos2[detail::uz(s)]};
      const index_t idx[2] = {index1[detail::uz(s)], index2[detail::uz(s)]};
      const T gate[2] = {g1, g2};
      for (index_t j = 0; j < 2; ++j) {
        if (pos[j] < 0) continue;
        const auto entry = detail::uz(t * 2 + j);
        plan.expert[entry] = static_cast<std::int32_t>(idx[j]);
        plan.slot[entry] = static_cast<std::int32_t>(pos[j]);
        plan.weight[entry] = gate[j];
        plan.slot_entry[detail::uz(plan.slot_index(g, idx[j], pos[j]))] = static_cast<index_t>(entry);
        if (j == 1) ++fill[idx[j]];
      }
    }
    wanted1[detail::uz(g)] = w1, wanted2[detail::uz(g)] = w2, kept1[detail::uz(g)] = k1, kept2[detail::uz(g)] = k2;
  }

  // Loss: per group, then over groups in order; no density denominators.
  if (S > 0) {
    const T Sf = static_cast<T>(S);
    r.parts.aux.assign(detail::uz(G), T(0));
    if (opt.second_place_loss) r.parts.aux2.assign(detail::uz(G), T(0));
    for (index_t g = 0; g < G; ++g) {
      const auto& L = losses[detail::uz(g)];
      T total = T(0), total2 = T(0);
      for (index_t e = 0; e < E; ++e) {
        total += (L.proxy_1[detail::uz(e)] / Sf) * (L.mask_1[detail::uz(e)] / Sf);
        if (opt.second_place_loss) total2 += (L.proxy_2[detail::uz(e)] / Sf) * (L.mask_2[detail::uz(e)] / Sf);
      }
      r.parts.aux[detail::uz(g)] = total;
      if (opt.second_place_loss) r.parts.aux2[detail::uz(g)] = total2;
    }
    r.aux_loss = detail::top2_aux_loss(r.parts, G, E);
  }
  auto& st = r.stats;
  detail::sum_stats(st, plan, wanted1, wanted2, kept1, kept2);
  st.first_choices.assign(detail::uz(E), 0);
  for (index_t g = 0; g < G; ++g)
    for (index_t e = 0; e < E; ++e)
      st.first_choices[detail::uz(e)] += static_cast<index_t>(losses[detail::uz(g)].mask_1[detail::uz(e)]);
  detail::finish_density(st, G * S);
  return r;
}

/// The same, written as the source writes it (the oracle): logits
/// [<batch>, group, experts] -> dispatch and combine [<batch>, group,
/// experts, expert_capacity], the loss, statistics.
template <class T>
Top2DenseResult<T> top2_gating_mtf_v1_dense(const Tensor<T>& logits_in, const Top2Options& opt,
                                            const Tensor<T>* max_experts = nullptr, const Tensor<T>* uniform = nullptr) {
  const auto p = detail::mtf_v1_problem(logits_in, opt, max_experts, uniform, "top2_gating_mtf_v1_dense");
  const std::string& group = p.group.name;
  const std::string& experts = p.experts.name;
  const T C = static_cast<T>(p.C);
  const T one(1), eps = static_cast<T>(1e-9);

  Tensor<T> raw_gates = softmax(p.logits, experts);
  auto top1 = top_1(raw_gates, experts, opt.ties);
  Tensor<T> gate_1 = std::move(top1.values);
  const Tensor<std::int64_t> index_1 = std::move(top1.indices);
  Tensor<T> mask_1 = one_hot<T>(index_1, p.experts);
  Tensor<T> gates_without_top_1 = raw_gates * (one - mask_1);
  auto top2 = top_1(gates_without_top_1, experts, opt.ties);
  Tensor<T> gate_2 = std::move(top2.values);
  const Tensor<std::int64_t> index_2 = std::move(top2.indices);
  Tensor<T> mask_2 = one_hot<T>(index_2, p.experts);

  if (p.importance) {  // max_experts
    const Tensor<T> geq1 = cast<T>(greater_equal(*p.importance, one));
    const Tensor<T> geq2 = cast<T>(greater_equal(*p.importance, T(2)));
    mask_1 = mask_1 * geq1;
    mask_2 = mask_2 * geq2;
    raw_gates = raw_gates * geq1;
    gates_without_top_1 = gates_without_top_1 * geq2;
  }

  // BALANCING LOSSES
  Top2DenseResult<T> out;
  const T E2 = static_cast<T>(p.E * p.E);
  if (p.G * p.S > 0) {
    const Tensor<T> density_1 = mean(mask_1, group);
    const Tensor<T> density_1_proxy = mean(raw_gates, group);
    out.aux_loss = mean_to(density_1_proxy * density_1, Shape()).item() * E2;
    if (opt.second_place_loss) {
      const Tensor<T> density_2 = mean(mask_2, group);
      const Tensor<T> normalized = gates_without_top_1 / (sum(gates_without_top_1, experts) + eps);
      const Tensor<T> density_2_proxy = mean(normalized, group);
      out.aux_loss += mean_to(density_2_proxy * density_2, Shape()).item() * E2 * T(0.5);
    }
  }

  switch (opt.policy) {
    case SecondPolicy::none: mask_2.fill(T(0)); break;
    case SecondPolicy::threshold: mask_2 = mask_2 * cast<T>(greater(gate_2, static_cast<T>(opt.threshold))); break;
    case SecondPolicy::random:
      mask_2 = mask_2 * cast<T>(less(*p.uniform, gate_2 / static_cast<T>(std::max(opt.threshold, 1e-9))));
      break;
    default: break;
  }

  auto total = [](const Tensor<T>& t) { return static_cast<index_t>(sum_to(t, Shape()).item()); };
  out.stats.first_wanted = total(mask_1);
  out.stats.second_wanted = total(mask_2);
  {
    const Tensor<T> d1 = sum_to(mask_1, Shape{p.experts});
    const double n = static_cast<double>(p.G * p.S);
    for (index_t e = 0; e < p.E; ++e) {
      out.stats.first_choices.push_back(static_cast<index_t>(d1[e]));
      out.stats.density_1.push_back(n > 0 ? static_cast<double>(d1[e]) / n : 0.0);
    }
  }

  // COMPUTE ASSIGNMENT TO EXPERTS
  Tensor<T> position_in_expert_1 = cumsum(mask_1, group, true) * mask_1;
  mask_1 = mask_1 * cast<T>(less(position_in_expert_1, C));
  const Tensor<T> mask_1_count = sum(mask_1, group);
  const Tensor<T> mask_1_flat = sum(mask_1, experts);
  position_in_expert_1 = sum(position_in_expert_1, experts);
  gate_1 = gate_1 * mask_1_flat;

  Tensor<T> position_in_expert_2 = cumsum(mask_2, group, true) + mask_1_count;
  position_in_expert_2 = position_in_expert_2 * mask_2;
  mask_2 = mask_2 * cast<T>(less(position_in_expert_2, C));
  const Tensor<T> mask_2_flat = sum(mask_2, experts);
  gate_2 = gate_2 * mask_2_flat;
  position_in_expert_2 = sum(position_in_expert_2, experts);

  const Tensor<T> denom = gate_1 + gate_2 + eps;
  gate_1 = gate_1 / denom;
  gate_2 = gate_2 / denom;

  out.stats.first_kept = total(mask_1);
  out.stats.second_kept = total(mask_2);
  const Tensor<T> per_expert = sum_to(mask_1 + mask_2, Shape{p.experts});
  for (index_t e = 0; e < p.E; ++e) out.stats.tokens_per_expert.push_back(static_cast<index_t>(per_expert[e]));
  out.stats.slots = detail::mul_size(detail::mul_size(p.G, p.E, "slots"), p.C, "slots");
  out.combine = detail::dense_combine(gate_1, mask_1_flat, index_1, position_in_expert_1, gate_2, mask_2_flat, index_2,
                                      position_in_expert_2, p.experts, p.capacity);
  out.dispatch = cast<T>(not_equal(out.combine, T(0)));
  return out;
}

}  // namespace einmoe
