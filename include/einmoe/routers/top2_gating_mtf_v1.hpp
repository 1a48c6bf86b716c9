// einmoe/routers/top2_gating_mtf_v1.hpp - the other _top_2_gating in the
// Mesh TF sources: the version with max_experts [batch, group].
//
// Example:
//   Top2Options o;
//   o.capacity = CapacitySpec::fixed(8);
//   o.ties = Ties::highest;                       // mtf.top_1 of that era
//   auto r = top2_gating_mtf_v1(logits, o, max_experts);        // fast: a RoutingPlan
//   auto d = top2_gating_mtf_v1_dense(logits, o, max_experts);  // the oracle
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
// Of Top2Options it uses capacity, policy (all, none, threshold, random),
// threshold, second_place_loss, seed and ties; normalize is not used.
//
// Shapes: logits [<batch>, group, experts]; max_experts and uniform draws
// [<batch>, group]; the plan / dense tensors as top2_gating's.
#pragma once

#include <algorithm>
#include <vector>

#include "einmoe/routers/top2_gating.hpp"
#include "einmoe/routers/top2_gating_dense.hpp"
#include "einmoe/routers/top2_options.hpp"

namespace einmoe {

namespace detail {
template <class T>
void mtf_v1_problem(GatingProblem<T>& p, const TensorView<const T>& logits, const Top2Options& o,
                    const std::optional<TensorView<const T>>& max_experts,
                    const std::optional<TensorView<const T>>& uniform, const MoEDims& dims, const char* op,
                    Tensor<T>& hold) {
  if (o.policy == SecondPolicy::sampling)
    raise<value_error>(op, ": policy sampling is not part of this gating (all, none, threshold, random)");
  GatingInputs<T> in;  // max_experts travels in the importance slot (same shape and checks)
  in.importance = max_experts;
  in.uniform = uniform;
  make_problem(p, logits, o, in, dims, op, hold, "max_experts");
}

/// One token of the max_experts gating: its choices into ch[s], its loss
/// terms into the group's sums.
template <class T>
void mtf_v1_token(const T* lg, T me, const Top2Options& opt, const Draws<T>& draws, index_t t, index_t E, T* raw,
                  T* without, const Top2Choices<T>& ch, index_t s, const Top2Sums<T>& L, index_t ge) {
  const T eps = T(1e-9);
  softmax_row(lg, raw, E, 1);
  const index_t i1 = argmax_row(raw, E, opt.ties);
  for (index_t e = 0; e < E; ++e) without[e] = e == i1 ? T(0) : raw[e];
  const index_t i2 = argmax_row(without, E, opt.ties);
  const bool geq1 = me >= T(1), geq2 = me >= T(2);
  // balancing-loss sums (before the policy and capacity)
  for (index_t e = 0; e < E; ++e) L.proxy_1[ge + e] += geq1 ? raw[e] : T(0);
  if (geq1) L.mask_1[ge + i1] += T(1);
  if (opt.second_place_loss) {
    T sum_w = T(0);
    for (index_t e = 0; e < E; ++e) sum_w += geq2 ? without[e] : T(0);
    const T denom = sum_w + eps;
    for (index_t e = 0; e < E; ++e) L.proxy_2[ge + e] += (geq2 ? without[e] : T(0)) / denom;
    if (geq2) L.mask_2[ge + i2] += T(1);
  }
  const T g2 = without[i2];
  const bool use2 = second_policy_keeps(opt, geq2, g2, draws, t);
  ch.index1[s] = i1, ch.index2[s] = i2;
  ch.gate1[s] = raw[i1], ch.gate2[s] = g2;
  ch.m1[s] = geq1, ch.m2[s] = use2;
}
}  // namespace detail

/// Mesh TF's _top_2_gating with max_experts, fast: logits [<batch>, group,
/// experts] (+ max_experts [<batch>, group], uniform draws [<batch>, group]
/// for policy random, else drawn from o.seed) -> plan (k = 2), aux_loss,
/// statistics. Throws shape_error / value_error as top2_gating (and for
/// policy sampling).
template <class T>
RouterResult<T> top2_gating_mtf_v1(const TensorView<const T>& logits, const Top2Options& opt,
                                   const OptionalView<T>& max_experts = std::nullopt,
                                   const OptionalView<T>& uniform = std::nullopt, const MoEDims& dims = {}) {
  RouterWorkspace<T> ws;
  detail::GatingProblem<T> p;
  detail::mtf_v1_problem(p, logits, opt, max_experts, uniform, dims, "top2_gating_mtf_v1", ws.logits_hold());
  const index_t G = p.G, S = p.S, E = p.E, C = p.C;
  RouterResult<T> r;
  const detail::Top2Run<T> run = detail::begin_top2(r, p, opt, RouteCall{}, ws);
  detail::parallel_items(G, [&](index_t g) {
    auto& th = ws.thread();
    const detail::Top2Choices<T> ch = detail::top2_choices<T>(th, S);
    T* raw = th.values(2, E);
    T* without = th.values(3, E);
    for (index_t s = 0; s < S; ++s) {
      const index_t t = g * S + s;
      const T me = p.importance ? (*p.importance)[t] : T(2);
      detail::mtf_v1_token(p.logits.data() + t * E, me, opt, run.draws, t, E, raw, without, ch, s, run.sums, g * E);
    }
    detail::assign_top2_slots(r.plan, g, S, E, C, ch, th, run.counts, [&](T& a, T& b) {
      const T d = a + b + T(1e-9);  // after capacity, always (the source)
      a /= d, b /= d;
    });
  });
  // The loss has no density denominators (normalize-before's form).
  detail::finish_top2(r, run.sums, G, S, E, opt.second_place_loss, false, run.counts);
  return r;
}

/// The same, written as the source writes it (the oracle): logits
/// [<batch>, group, experts] -> dispatch and combine [<batch>, group,
/// experts, expert_capacity], the loss, statistics.
/// Throws as top2_gating_mtf_v1.
template <class T>
DenseRouterResult<T> top2_gating_mtf_v1_dense(const TensorView<const T>& logits_in, const Top2Options& opt,
                                              const OptionalView<T>& max_experts = std::nullopt,
                                              const OptionalView<T>& uniform = std::nullopt, const MoEDims& dims = {}) {
  detail::GatingProblem<T> p;
  Tensor<T> hold;
  detail::mtf_v1_problem(p, logits_in, opt, max_experts, uniform, dims, "top2_gating_mtf_v1_dense", hold);
  detail::draw_dense_inputs(p, opt, RouteCall{});
  const std::string& group = p.group.name;
  const std::string& experts = p.experts.name;
  const T one(1), eps = static_cast<T>(1e-9);

  Tensor<T> raw_gates = softmax(p.logits, experts);
  auto first = top1(raw_gates, experts, opt.ties);
  Tensor<T> gate_1 = std::move(first.values);
  const Tensor<std::int64_t> index_1 = std::move(first.indices);
  Tensor<T> mask_1 = one_hot<T>(index_1, p.experts);
  Tensor<T> gates_without_top_1 = raw_gates * (one - mask_1);
  auto second = top1(gates_without_top_1, experts, opt.ties);
  Tensor<T> gate_2 = std::move(second.values);
  const Tensor<std::int64_t> index_2 = std::move(second.indices);
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
  DenseRouterResult<T> out;
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
