// einmoe/routers/top2_gating_mtf_v1.hpp - the other _top_2_gating in the
// Mesh TF sources: the version with max_experts [batch, group].
//
// Example:
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
    L.reset(E);
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
    index_t w1 = 0, w2 = 0, k1 = 0, k2 = 0;
    detail::assign_top2_slots(plan, g, S, E, C, index1, index2, m1, m2, gate1, gate2, w1, w2, k1, k2, [&](T& a, T& b) {
      const T d = a + b + eps;  // after capacity, always (the source)
      a /= d, b /= d;
    });
    wanted1[detail::uz(g)] = w1, wanted2[detail::uz(g)] = w2, kept1[detail::uz(g)] = k1, kept2[detail::uz(g)] = k2;
  }

  // The loss has no density denominators (normalize-before's form).
  detail::finish_top2(r, losses, G, S, E, opt.second_place_loss, false, wanted1, wanted2, kept1, kept2);
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
    if (opt.second_place_loss)
      out.aux_loss += detail::dense_second_place_loss(mask_2, gates_without_top_1, group, experts, eps, E2);
  }

  detail::dense_policy_and_slots(p, opt, std::move(mask_1), std::move(mask_2), std::move(gate_1), std::move(gate_2),
                                 index_1, index_2, out, [&](Tensor<T>& g1, Tensor<T>& g2) {
                                   const Tensor<T> denom = g1 + g2 + eps;  // after capacity, always
                                   g1 = g1 / denom;
                                   g2 = g2 / denom;
                                 });
  return out;
}

}  // namespace einmoe
