// einmoe/routers/truncated_gating.hpp - Mesh TF's truncated top-2 gating
// (_truncated_top_2_gating_mtf, used by moe_v0), fast and dense.
//
// Works on gates (probabilities), not logits: gates [<batch>, group, experts].
// The first choice is the argmax with capacity as in top-2 gating. The second
// choice avoids experts expected to be exhausted: with count_1[e] the kept
// first choices of expert e,
//   use_rate[e] = (count_1[e] + 1) / group_size
//   exhaustion_pos[e] = (C - count_1[e]) / use_rate[e]
// and token s treats e as exhausted when s > exhaustion_pos[e]. The second
// expert is argmax(gates - mask_1 - exhausted) and gate_2 is that (masked)
// value, exactly as in the source. Slots are then assigned as in top-2
// gating and the kept gates renormalized by gate_1 + gate_2 + 1e-9.
//
// Example:
//   RoutingPlan<float> plan = truncated_top2_gating(gates, opt).plan;   // fast
//   auto combine = truncated_top2_gating_dense(gates, opt);      // [<batch>, group, experts, expert_capacity]
//
// Of Top2Options only capacity and ties are used.
#pragma once

#include <vector>

#include "einmoe/ops/cumsum.hpp"
#include "einmoe/ops/elementwise.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/ops/reduce.hpp"
#include "einmoe/routers/top2_gating.hpp"
#include "einmoe/routers/top2_gating_dense.hpp"
#include "einmoe/routers/top2_options.hpp"

namespace einmoe {

/// Truncated top-2 gating, fast: gates [<batch>, group, experts] -> plan
/// (k = 2) and statistics (no loss). Throws shape_error / value_error as
/// top2_gating.
template <class T>
RouterResult<T> truncated_top2_gating(const TensorView<const T>& gates, const Top2Options& opt,
                                      const MoEDims& dims = {}) {
  RouterWorkspace<T> ws;
  detail::GatingProblem<T> p;
  detail::make_problem(p, gates, opt, GatingInputs<T>{}, dims, "truncated_top2_gating", ws.logits_hold());
  const index_t G = p.G, S = p.S, E = p.E, C = p.C;
  RouterResult<T> r;
  r.plan.reset(p.batch, p.group, p.experts, p.capacity, 2);
  auto& plan = r.plan;
  const detail::GroupCounts gc = detail::group_counts(ws, G);
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (G > 1)
#endif
  for (index_t g = 0; g < G; ++g) {
    const T* gt = p.logits.data() + g * S * E;
    std::vector<index_t> i1(detail::uz(S)), pos1(detail::uz(S), -1);
    std::vector<index_t> count1(detail::uz(E), 0);
    for (index_t s = 0; s < S; ++s) {
      i1[detail::uz(s)] = detail::argmax_row(gt + s * E, E, opt.ties);
      const index_t pos = count1[detail::uz(i1[detail::uz(s)])]++;
      if (pos < C) pos1[detail::uz(s)] = pos;
    }
    std::vector<T> kept1(detail::uz(E)), exhaustion(detail::uz(E)), masked(detail::uz(E));
    for (index_t e = 0; e < E; ++e) {
      kept1[detail::uz(e)] = static_cast<T>(std::min(count1[detail::uz(e)], C));
      const T use_rate = (kept1[detail::uz(e)] + T(1)) / static_cast<T>(S);
      exhaustion[detail::uz(e)] = (static_cast<T>(C) - kept1[detail::uz(e)]) / use_rate;
    }
    std::vector<index_t> count2(detail::uz(E), 0);
    std::int32_t* taken = plan.taken.data() + g * E;
    for (index_t e = 0; e < E; ++e) taken[e] = static_cast<std::int32_t>(kept1[detail::uz(e)]);
    index_t kk1 = 0, kk2 = 0;
    for (index_t s = 0; s < S; ++s) {
      const T* row = gt + s * E;
      const index_t a = i1[detail::uz(s)];
      const bool kept_first = pos1[detail::uz(s)] >= 0;  // mask_1 after capacity, as the source
      for (index_t e = 0; e < E; ++e)
        masked[detail::uz(e)] = row[e] - (e == a && kept_first ? T(1) : T(0)) -
                                (static_cast<T>(s) > exhaustion[detail::uz(e)] ? T(1) : T(0));
      const index_t b = detail::argmax_row(masked.data(), E, opt.ties);
      const index_t p2 = count2[detail::uz(b)]++ + static_cast<index_t>(kept1[detail::uz(b)]);
      const bool keep1 = pos1[detail::uz(s)] >= 0, keep2 = p2 < C;
      T g1 = keep1 ? row[a] : T(0);
      T g2 = keep2 ? masked[detail::uz(b)] : T(0);
      const T d = g1 + g2 + static_cast<T>(1e-9);
      g1 /= d;
      g2 /= d;
      const index_t t = g * S + s;
      if (keep1) {
        plan.expert[detail::uz(2 * t)] = static_cast<std::int32_t>(a);
        plan.slot[detail::uz(2 * t)] = static_cast<std::int32_t>(pos1[detail::uz(s)]);
        plan.weight[detail::uz(2 * t)] = g1;
        plan.slot_entry[detail::uz(plan.slot_index(g, a, pos1[detail::uz(s)]))] = 2 * t;
        ++kk1;
      }
      if (keep2) {
        plan.expert[detail::uz(2 * t + 1)] = static_cast<std::int32_t>(b);
        plan.slot[detail::uz(2 * t + 1)] = static_cast<std::int32_t>(p2);
        plan.weight[detail::uz(2 * t + 1)] = g2;
        plan.slot_entry[detail::uz(plan.slot_index(g, b, p2))] = 2 * t + 1;
        ++taken[b];
        ++kk2;
      }
    }
    gc.wanted1[g] = S, gc.wanted2[g] = S, gc.kept1[g] = kk1, gc.kept2[g] = kk2;
  }
  detail::sum_stats(r.stats, plan, gc);
  r.stats.first_choices.assign(detail::uz(E), 0);
  r.stats.density_1.assign(detail::uz(E), 0.0);
  return r;
}

/// Truncated top-2 gating, written as Mesh TF writes it: gates [<batch>,
/// group, experts] -> combine [<batch>, group, experts, capacity].
/// Throws as truncated_top2_gating.
template <class T>
Tensor<T> truncated_top2_gating_dense(const TensorView<const T>& gates_in, const Top2Options& opt,
                                      const MoEDims& dims = {}) {
  detail::GatingProblem<T> p;
  Tensor<T> hold;
  detail::make_problem(p, gates_in, opt, GatingInputs<T>{}, dims, "truncated_top2_gating_dense", hold);
  const std::string& group = p.group.name;
  const std::string& experts = p.experts.name;
  const TensorView<const T>& gates = p.logits;
  const T C = static_cast<T>(p.C);
  auto first = top1(gates, experts, opt.ties);
  Tensor<T> gate_1 = std::move(first.values);
  const auto index_1 = std::move(first.indices);
  Tensor<T> mask_1 = one_hot<T>(index_1, p.experts);
  const detail::DenseSlots<T> slots_1 = detail::dense_capacity(mask_1, gate_1, std::nullopt, group, experts, C);
  const Tensor<T> mask_1_count = sum(mask_1, group);

  const Tensor<T> space_remaining = C - mask_1_count;
  const Tensor<T> use_rate = (mask_1_count + T(1)) / static_cast<T>(p.S);
  const Tensor<T> expected_exhaustion_pos = space_remaining / use_rate;
  const Tensor<T> expected_exhausted = cast<T>(greater(range<T>(p.group), expected_exhaustion_pos));
  const Tensor<T> masked_gates = gates - mask_1 - expected_exhausted;
  auto second = top1(masked_gates, experts, opt.ties);
  Tensor<T> gate_2 = std::move(second.values);
  const auto index_2 = std::move(second.indices);
  Tensor<T> mask_2 = one_hot<T>(index_2, p.experts);
  const detail::DenseSlots<T> slots_2 =
      detail::dense_capacity(mask_2, gate_2, TensorView<const T>(mask_1_count), group, experts, C);

  const Tensor<T> denom = gate_1 + gate_2 + static_cast<T>(1e-9);
  gate_1 = gate_1 / denom;
  gate_2 = gate_2 / denom;
  return detail::dense_combine(gate_1, slots_1.flat, index_1, slots_1.position, gate_2, slots_2.flat, index_2,
                               slots_2.position, p.experts, p.capacity);
}

}  // namespace einmoe
