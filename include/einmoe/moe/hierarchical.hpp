// einmoe/moe/hierarchical.hpp - a two-level (hierarchical) MoE, as in Mesh
// TF's transformer_moe_layer_v2 and tensor2tensor's hierarchical mixtures.
//
// Outer top-2 gating sends tokens to Eo expert groups (capacity Co). Inside
// each group, inner top-2 gating over the group's Co slots sends them to Ei
// experts (capacity Ci), with an importance per slot derived from the outer
// combine weight w of the token in it:
//   importance = 0.5 * ([w > 0.5] + [w > 0])   -> 1 first choice, 0.5 second, 0 empty
// so second-choice tokens use at most one inner expert and empty slots none.
//
//   weights: wg_outer [model, outer_experts], wg_inner [outer_experts, model, inner_experts],
//            wi [outer_experts, inner_experts, model, hidden], wo [.., hidden, model]
//   x [<batch>, group, model] -> outputs [<batch>, group, model],
//   aux_loss = outer loss + inner loss.
//
// The fast path runs the outer plan, the inner plans and one GEMM pair per
// (outer, inner) expert over filled rows; dense = true runs the sources'
// one-hot einsums (the oracle).
#pragma once

#include <string>

#include "einmoe/experts/experts.hpp"
#include "einmoe/routers/top2_gating.hpp"
#include "einmoe/routers/top2_gating_dense.hpp"

namespace einmoe {

template <class T>
struct HierarchicalWeights {
  Tensor<T> wg_outer;  ///< [model, outer_experts]
  Tensor<T> wg_inner;  ///< [outer_experts, model, inner_experts]
  Tensor<T> wi;        ///< [outer_experts, inner_experts, model, hidden]
  Tensor<T> wo;        ///< [outer_experts, inner_experts, hidden, model]
};

struct HierarchicalOptions {
  /// Outer gating: its group_dim is the token dim of x; capacity e.g.
  /// "outer_capacity" (size 0: from capacity_factor, see Top2Options).
  Top2Options outer{Dim("outer_capacity", 0), "group", "outer_experts"};
  /// Inner gating: its group_dim is ignored (the inner groups are the outer
  /// capacity slots); capacity e.g. "inner_capacity".
  Top2Options inner{Dim("inner_capacity", 0), "outer_capacity", "inner_experts"};
  std::string model_dim = "model";
  std::string hidden_dim = "hidden";
  Activation activation = Activation::relu;
  bool dense = false;
};

template <class T>
struct HierarchicalResult {
  Tensor<T> outputs;
  T aux_loss = T(0);          ///< outer + inner balancing losses
  RoutingStats outer, inner;  ///< inner: over all outer experts (Eo * Ei experts)
};

namespace detail {
inline Top2Options inner_options(const HierarchicalOptions& o) {
  Top2Options in = o.inner;
  in.group_dim = o.outer.capacity.name;
  if (in.capacity.name == in.group_dim || in.experts_dim == o.outer.experts_dim)
    raise<value_error>("hierarchical_moe: inner and outer gating need distinct capacity and expert dim names");
  return in;
}
}  // namespace detail

/// Two-level MoE forward pass; see the file comment. x [<batch>, group,
/// model] -> outputs [<batch>, group, model], aux_loss (outer + inner) and
/// the statistics of both levels.
template <class T>
HierarchicalResult<T> hierarchical_moe_forward(const Tensor<T>& x_in, const HierarchicalWeights<T>& w,
                                               const HierarchicalOptions& o) {
  const char* op = "hierarchical_moe_forward";
  const Dim model = x_in.shape().get(o.model_dim, op);
  const Dim group = x_in.shape().get(o.outer.group_dim, op);
  const Dim eo = w.wg_outer.shape().get(o.outer.experts_dim, op);
  const Dim ei = w.wg_inner.shape().get(o.inner.experts_dim, op);
  Top2Options outer = o.outer;  // capacities resolved for these sizes
  outer.capacity = resolved_capacity(o.outer, group.size, eo.size, op);
  const Dim co = outer.capacity;
  const Dim hidden = w.wi.shape().get(o.hidden_dim, op);
  Top2Options inner = detail::inner_options(o);
  inner.capacity = resolved_capacity(inner, co.size, ei.size, op);
  const Shape batch = x_in.shape().without({o.model_dim, o.outer.group_dim});
  Tensor<T> x_hold;
  const Tensor<T>& x = in_order(x_in, batch.with(group).with(model), x_hold);

  // [Eo, <batch>, Co, ...] shapes
  Shape eb{eo};
  for (const auto& d : batch) eb = eb.with(d);
  const Shape eio_shape = eb.with(co).with(model);
  const Shape importance_shape = eb.with(co);
  const Shape inner_logits_shape = importance_shape.with(ei);

  HierarchicalResult<T> out;
  const Tensor<T> logits_o = einsum({x, w.wg_outer}, batch.with(group).with(eo));
  if (o.dense) {
    const auto d_o = top2_gating_dense(logits_o, outer);
    const Tensor<T> expert_inputs_outer = einsum({x, d_o.dispatch}, eio_shape);
    const Tensor<T> imp = sum_to(d_o.combine, importance_shape);
    GatingInputs<T> in;
    in.importance = (cast<T>(greater(imp, T(0.5))) + cast<T>(greater(imp, T(0)))) * T(0.5);
    const Tensor<T> logits_i = einsum({expert_inputs_outer, w.wg_inner}, inner_logits_shape);
    const auto d_i = top2_gating_dense(logits_i, inner, in);
    Shape eeb = Shape{eo, ei};
    for (const auto& d : batch) eeb = eeb.with(d);
    const Tensor<T> expert_inputs = einsum({expert_inputs_outer, d_i.dispatch}, eeb.with(inner.capacity).with(model));
    Tensor<T> h = einsum({expert_inputs, w.wi}, eeb.with(inner.capacity).with(hidden));
    detail::apply_activation(o.activation, h.data(), h.size());
    const Tensor<T> y = einsum({h, w.wo}, eeb.with(inner.capacity).with(model));
    const Tensor<T> expert_outputs_outer = einsum({y, d_i.combine}, eio_shape);
    out.outputs = einsum({expert_outputs_outer, d_o.combine}, batch.with(group).with(model));
    out.aux_loss = d_o.aux_loss + d_i.aux_loss;
    out.outer = d_o.stats;
    out.inner = d_i.stats;
  } else {
    const auto r_o = top2_gating(logits_o, outer);
    const index_t G = r_o.plan.groups(), S = group.size, Eo = eo.size, Co = co.size, M = model.size, K = r_o.plan.k;
    // Outer dispatch: [Eo, <batch>, Co, M], zero rows for empty (or zero-weight) slots.
    Tensor<T> eio(eio_shape);
    Tensor<T> importance(importance_shape);
    for (index_t g = 0; g < G; ++g)
      for (index_t e = 0; e < Eo; ++e)
        for (index_t c = 0; c < r_o.plan.fill[detail::uz(g * Eo + e)]; ++c) {
          const index_t entry = r_o.plan.slot_entry[detail::uz(r_o.plan.slot_index(g, e, c))];
          const T wgt = r_o.plan.weight[detail::uz(entry)];
          if (wgt == T(0)) continue;
          const index_t dst = (e * G + g) * Co + c;
          std::copy_n(x.data() + (entry / K) * M, M, eio.data() + dst * M);
          importance[dst] = T(0.5) * ((wgt > T(0.5) ? T(1) : T(0)) + T(1));
        }
    GatingInputs<T> in;
    in.importance = std::move(importance);
    const Tensor<T> logits_i = einsum({eio, w.wg_inner}, inner_logits_shape);
    const auto r_i = top2_gating(logits_i, inner, in);
    // Inner experts, one outer expert at a time, over their filled rows only.
    Tensor<T> wi_hold, wo_hold;
    const Tensor<T>& wi = in_order(w.wi, Shape{eo, ei, model, hidden}, wi_hold);
    const Tensor<T>& wo = in_order(w.wo, Shape{eo, ei, hidden, model}, wo_hold);
    const index_t per = ei.size * M * hidden.size;
    ExpertOptions cfg;
    cfg.experts_dim = ei.name;
    cfg.model_dim = model.name;
    cfg.hidden_dim = hidden.name;
    cfg.activation = o.activation;
    ExpertWorkspace<T> ws;
    Tensor<T> y_outer(eio_shape);
    Tensor<T> y_e(Shape(), uninitialized);
    for (index_t e = 0; e < Eo; ++e) {
      ExpertWeights<T> we;
      we.wi = Tensor<T>::borrow(wi.data() + e * per, Shape{ei, model, hidden});
      we.wo = Tensor<T>::borrow(wo.data() + e * per, Shape{ei, hidden, model});
      const RoutingPlan<T> sub = r_i.plan.slice_groups(e * G, G, batch);
      const Tensor<T> x_e = Tensor<T>::borrow(eio.data() + e * G * Co * M, batch.with(co).with(model));
      experts_sparse_into(y_e, x_e, sub, PackedExperts<T>(we, cfg), ws);
      std::copy(y_e.begin(), y_e.end(), y_outer.data() + e * G * Co * M);
    }
    // Outer combine.
    out.outputs = Tensor<T>(batch.with(group).with(model));
    for (index_t t = 0; t < G * S; ++t)
      for (index_t j = 0; j < K; ++j) {
        const auto i = detail::uz(t * K + j);
        const T wgt = r_o.plan.weight[i];
        if (r_o.plan.expert[i] < 0 || wgt == T(0)) continue;
        const T* src = y_outer.data() + ((r_o.plan.expert[i] * G + t / S) * Co + r_o.plan.slot[i]) * M;
        T* dst = out.outputs.data() + t * M;
        for (index_t m = 0; m < M; ++m) dst[m] += wgt * src[m];
      }
    out.aux_loss = r_o.aux_loss + r_i.aux_loss;
    out.outer = r_o.stats;
    out.inner = r_i.stats;
  }
  out.outputs = transpose(out.outputs, x_in.shape());
  return out;
}

}  // namespace einmoe
