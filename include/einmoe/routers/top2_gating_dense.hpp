// einmoe/routers/top2_gating_dense.hpp - top-2 gating written as the sources
// write it: one-hot masks, cumsums and broadcasts over [<batch>, group,
// experts, expert_capacity] tensors.
//
// This is the oracle: slow (it builds S x E x C tensors) but a line-by-line
// transcription of Mesh TF's _top_2_gating / lingvo's Top2GatingOnLogits, so
// the fast top2_gating can be tested against it. Use top2_gating in models.
//
// Example:
//   DenseRouterResult<float> d = top2_gating_dense(logits, opt);   // logits [<batch>, group, experts]
//   Tensor<float> combine = d.combine;         // [<batch>, group, experts, expert_capacity], as d.dispatch
//   double aux = d.aux_loss;
#pragma once

#include <algorithm>
#include <limits>

#include "einmoe/ops/cumsum.hpp"
#include "einmoe/ops/elementwise.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/ops/reduce.hpp"
#include "einmoe/ops/softmax.hpp"
#include "einmoe/routers/router.hpp"
#include "einmoe/routers/top2_options.hpp"

namespace einmoe {

namespace detail {
/// The sources' combine tensor from the two choices:
///   gate_1 * flat_1 * one_hot(index_1, experts) * one_hot(position_1, capacity)
/// + gate_2 * flat_2 * one_hot(index_2, experts) * one_hot(position_2, capacity)
/// -> [<tokens>, experts, capacity].
template <class T>
Tensor<T> dense_combine(const TensorView<const T>& gate_1, const TensorView<const T>& flat_1,
                        const TensorView<const std::int64_t>& index_1, const TensorView<const T>& position_1,
                        const TensorView<const T>& gate_2, const TensorView<const T>& flat_2,
                        const TensorView<const std::int64_t>& index_2, const TensorView<const T>& position_2,
                        const Dim& experts, const Dim& capacity) {
  return gate_1 * flat_1 * one_hot<T>(index_1, experts) * one_hot<T>(cast<std::int64_t>(position_1), capacity) +
         gate_2 * flat_2 * one_hot<T>(index_2, experts) * one_hot<T>(cast<std::int64_t>(position_2), capacity);
}
/// One choice's capacity step, as the sources write it: position_in_expert
/// = (exclusive cumsum of mask over the group + taken) * mask, where taken
/// [<batch>, experts] counts slots already filled (none: 0); mask
/// [<batch>, group, experts] drops choices at positions >= C, and gate
/// [<batch>, group] is zeroed with them. Returns mask_flat and the position
/// [<batch>, group] (summed over experts).
template <class T>
struct DenseSlots {
  Tensor<T> flat, position;
};
template <class T>
DenseSlots<T> dense_capacity(Tensor<T>& mask, Tensor<T>& gate, const OptionalView<T>& taken, const std::string& group,
                             const std::string& experts, T C) {
  Tensor<T> position = taken ? (cumsum(mask, group, true) + *taken) * mask : cumsum(mask, group, true) * mask;
  mask = mask * cast<T>(less(position, C));
  DenseSlots<T> out{sum(mask, experts), sum(position, experts)};
  gate = gate * out.flat;
  return out;
}

/// The second-place loss term of both Mesh TF top-2 gatings: 0.5 E^2
/// mean(mean_group(normalized) * mean_group(mask_2)), normalized = the gates
/// without the top choice over their sum + eps; mask_2 [<batch>, group,
/// experts] before capacity.
template <class T>
T dense_second_place_loss(const TensorView<const T>& mask_2, const TensorView<const T>& gates_without_top_1,
                          const std::string& group, const std::string& experts, T eps, T E2) {
  const Tensor<T> density_2 = mean(mask_2, group);
  const Tensor<T> normalized = gates_without_top_1 / (sum(gates_without_top_1, experts) + eps);
  const Tensor<T> density_2_proxy = mean(normalized, group);
  return mean_to(density_2_proxy * density_2, Shape()).item() * E2 * T(0.5);
}

/// The sources' steps after the balancing loss, shared by the dense top-2
/// gatings: the second policy on mask_2, statistics, positions in each
/// expert (cumsums), capacity, the gates' renormalization after capacity
/// (finish(gate_1, gate_2)), and the combine and dispatch tensors.
template <class T, class Finish>
void dense_policy_and_slots(const GatingProblem<T>& p, const Top2Options& opt, Tensor<T> mask_1, Tensor<T> mask_2,
                            Tensor<T> gate_1, Tensor<T> gate_2, const TensorView<const std::int64_t>& index_1,
                            const TensorView<const std::int64_t>& index_2, DenseRouterResult<T>& out, Finish&& finish) {
  const std::string& group = p.group.name;
  const std::string& experts = p.experts.name;
  const T C = static_cast<T>(p.C);
  // SECOND POLICY
  switch (opt.policy) {
    case SecondPolicy::none: mask_2.fill(T(0)); break;
    case SecondPolicy::threshold: mask_2 = mask_2 * cast<T>(greater(gate_2, static_cast<T>(opt.threshold))); break;
    case SecondPolicy::random:
      mask_2 = mask_2 * cast<T>(less(*p.uniform, gate_2 / static_cast<T>(std::max(opt.threshold, 1e-9))));
      break;
    default: break;
  }

  // statistics before capacity
  auto total = [](const TensorView<const T>& t) { return static_cast<index_t>(sum_to(t, Shape()).item()); };
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
  const DenseSlots<T> slots_1 = dense_capacity(mask_1, gate_1, std::nullopt, group, experts, C);
  const Tensor<T> mask_1_count = sum(mask_1, group);
  const DenseSlots<T> slots_2 = dense_capacity(mask_2, gate_2, TensorView<const T>(mask_1_count), group, experts, C);

  finish(gate_1, gate_2);

  out.stats.first_kept = total(mask_1);
  out.stats.second_kept = total(mask_2);
  const Tensor<T> per_expert = sum_to(mask_1 + mask_2, Shape{p.experts});
  for (index_t e = 0; e < p.E; ++e) out.stats.tokens_per_expert.push_back(static_cast<index_t>(per_expert[e]));
  out.stats.slots = detail::mul_size(detail::mul_size(p.G, p.E, "slots"), p.C, "slots");

  out.combine = detail::dense_combine(gate_1, slots_1.flat, index_1, slots_1.position, gate_2, slots_2.flat, index_2,
                                      slots_2.position, p.experts, p.capacity);
  out.dispatch = cast<T>(not_equal(out.combine, T(0)));
}
}  // namespace detail

/// Top-2 gating, dense formulation (the oracle): logits [<batch>, group,
/// experts] (+ GatingInputs) -> dispatch and combine [<batch>, group,
/// experts, expert_capacity], the balancing loss and statistics; `call`
/// picks the draws as route_into does. Throws as route_into.
template <class T>
DenseRouterResult<T> route_dense(const TensorView<const T>& logits_in, const Top2Options& opt,
                                 const GatingInputs<T>& in, const MoEDims& dims, const RouteCall& call) {
  detail::GatingProblem<T> p;
  Tensor<T> logits_hold;
  detail::make_problem(p, logits_in, opt, in, dims, "top2_gating_dense", logits_hold);
  detail::draw_dense_inputs(p, opt, call);
  const std::string& group = p.group.name;
  const std::string& experts = p.experts.name;
  const TensorView<const T>& logits = p.logits;
  const T one(1), eps = static_cast<T>(1e-9);

  // FIND TOP 2 EXPERTS PER POSITION
  const Tensor<T> raw_gates = softmax(logits, experts);
  auto first = top1(raw_gates, experts, opt.ties);
  Tensor<T> gate_1 = std::move(first.values);
  const Tensor<std::int64_t> index_1 = std::move(first.indices);
  Tensor<T> mask_1 = one_hot<T>(index_1, p.experts);
  Tensor<T> density_1_proxy = raw_gates;
  if (p.importance) {
    const Tensor<T> is_one = cast<T>(equal(*p.importance, one));
    mask_1 = mask_1 * is_one;
    gate_1 = gate_1 * is_one;
    density_1_proxy = density_1_proxy * is_one;
  }
  const Tensor<T> gates_without_top_1 = raw_gates * (one - mask_1);
  Tensor<std::int64_t> index_2;
  if (opt.policy == SecondPolicy::sampling) {
    const T very_negative = T(-0.7) * std::numeric_limits<T>::max();
    const Tensor<T> updated = where(greater(mask_1, T(0)), very_negative, logits);
    index_2 = top1(updated + *p.gumbel, experts, opt.ties).indices;
  } else {
    index_2 = top1(gates_without_top_1, experts, opt.ties).indices;
  }
  Tensor<T> mask_2 = one_hot<T>(index_2, p.experts);
  Tensor<T> gate_2 = sum(gates_without_top_1 * mask_2, experts);
  if (p.importance) mask_2 = mask_2 * cast<T>(greater(*p.importance, T(0)));

  if (opt.normalize == Normalize::before) {
    const Tensor<T> denom = gate_1 + gate_2 + eps;
    gate_1 = gate_1 / denom;
    gate_2 = gate_2 / denom;
  }

  // BALANCING LOSSES
  DenseRouterResult<T> out;
  const T E2 = static_cast<T>(p.E * p.E);
  if (p.G * p.S > 0) {
    Tensor<T> density_1 = mean(mask_1, group);
    Tensor<T> density_1_proxy_mean = mean(density_1_proxy, group);
    if (opt.normalize == Normalize::after) {
      const Tensor<T> ones(p.batch.with(p.group), one);
      const Tensor<T> denom = mean(p.importance ? *p.importance : TensorView<const T>(ones), group) + T(1e-6);
      density_1 = density_1 / denom;
      density_1_proxy_mean = density_1_proxy_mean / denom;
    }
    out.aux_loss = mean_to(density_1_proxy_mean * density_1, Shape()).item() * E2;
    if (opt.second_place_loss)
      out.aux_loss += detail::dense_second_place_loss(mask_2, gates_without_top_1, group, experts, eps, E2);
  }

  detail::dense_policy_and_slots(p, opt, std::move(mask_1), std::move(mask_2), std::move(gate_1), std::move(gate_2),
                                 index_1, index_2, out, [&](Tensor<T>& g1, Tensor<T>& g2) {
                                   if (opt.normalize == Normalize::after) {
                                     Tensor<T> denom = g1 + g2;
                                     denom = where(greater(denom, T(0)), denom, one);
                                     g1 = g1 / denom;
                                     g2 = g2 / denom;
                                   }
                                 });
  return out;
}

/// Top-2 gating, dense formulation: logits [<batch>, group, experts] ->
/// dispatch and combine [<batch>, group, experts, expert_capacity], the
/// balancing loss and statistics (see route_dense).
/// Throws as top2_gating.
template <class T>
DenseRouterResult<T> top2_gating_dense(const TensorView<const T>& logits, const Top2Options& opt,
                                       const GatingInputs<T>& in = {}, const MoEDims& dims = {}) {
  return route_dense(logits, opt, in, dims, RouteCall{});
}

}  // namespace einmoe
