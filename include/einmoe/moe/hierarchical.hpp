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
  TensorView<const T> wg_outer;  ///< [model, outer_experts]
  TensorView<const T> wg_inner;  ///< [outer_experts, model, inner_experts]
  TensorView<const T> wi;        ///< [outer_experts, inner_experts, model, hidden]
  TensorView<const T> wo;        ///< [outer_experts, inner_experts, hidden, model]
};

struct HierarchicalOptions {
  /// The outer gating (over dims.group tokens) and the inner one (over the
  /// outer capacity slots): their capacity, policy, normalization.
  Top2Options outer, inner;
  MoEDims dims;  ///< the token group, model and hidden dims
  std::string outer_experts_dim = "outer_experts", inner_experts_dim = "inner_experts";
  std::string outer_capacity_dim = "outer_capacity", inner_capacity_dim = "inner_capacity";
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
/// The dims of the outer gating (tokens -> outer experts) and of the inner
/// one (outer slots -> inner experts); value_error unless their names differ.
inline MoEDims outer_dims(const HierarchicalOptions& o) {
  MoEDims d = o.dims;
  d.experts = o.outer_experts_dim;
  d.capacity = o.outer_capacity_dim;
  return d;
}
inline MoEDims inner_dims(const HierarchicalOptions& o) {
  MoEDims d = o.dims;
  d.group = o.outer_capacity_dim;
  d.experts = o.inner_experts_dim;
  d.capacity = o.inner_capacity_dim;
  if (d.capacity == d.group || d.experts == o.outer_experts_dim)
    raise<value_error>("hierarchical_moe: inner and outer gating need distinct capacity and expert dim names");
  return d;
}
}  // namespace detail

namespace detail {

/// The dims, shapes and resolved options of one hierarchical forward pass.
template <class T>
struct HierarchicalProblem {
  TensorView<const T> x;  // [<batch>, group, model]
  Tensor<T> x_hold;
  MoEDims od, id;  // the outer and inner gatings' dims
  Top2Options outer, inner;
  Dim model, group, eo, ei, co, ci, hidden;
  Shape batch, eio_shape, importance_shape, inner_logits_shape;  // [Eo, <batch>, Co, (M | Ei)]
};

template <class T>
void hierarchical_problem(HierarchicalProblem<T>& p, const TensorView<const T>& x_in, const HierarchicalWeights<T>& w,
                          const HierarchicalOptions& o) {
  const char* op = "hierarchical_moe_forward";
  p.od = outer_dims(o), p.id = inner_dims(o);
  p.model = x_in.shape().get(o.dims.model, op);
  p.group = x_in.shape().get(o.dims.group, op);
  p.eo = w.wg_outer.shape().get(p.od.experts, op);
  p.ei = w.wg_inner.shape().get(p.id.experts, op);
  p.outer = o.outer, p.inner = o.inner;  // capacities resolved for these sizes
  p.co = Dim(p.od.capacity, o.outer.capacity.slots(p.group.size, p.eo.size, 2, op));
  p.outer.capacity = CapacitySpec::fixed(p.co.size);
  p.hidden = w.wi.shape().get(o.dims.hidden, op);
  p.ci = Dim(p.id.capacity, o.inner.capacity.slots(p.co.size, p.ei.size, 2, op));
  p.inner.capacity = CapacitySpec::fixed(p.ci.size);
  p.batch = x_in.shape().without({o.dims.model, o.dims.group});
  p.x = in_order(x_in, p.batch.with(p.group).with(p.model), p.x_hold);
  Shape eb{p.eo};
  for (const auto& d : p.batch) eb = eb.with(d);
  p.eio_shape = eb.with(p.co).with(p.model);
  p.importance_shape = eb.with(p.co);
  p.inner_logits_shape = p.importance_shape.with(p.ei);
}

/// The sources' one-hot einsums (the oracle).
template <class T>
void hierarchical_dense(const HierarchicalProblem<T>& p, const HierarchicalWeights<T>& w, const HierarchicalOptions& o,
                        const TensorView<const T>& logits_o, HierarchicalResult<T>& out) {
  const auto d_o = top2_gating_dense(logits_o, p.outer, {}, p.od);
  const Tensor<T> expert_inputs_outer = einsum({p.x, d_o.dispatch}, p.eio_shape);
  const Tensor<T> imp = sum_to(d_o.combine, p.importance_shape);
  const Tensor<T> importance = (cast<T>(greater(imp, T(0.5))) + cast<T>(greater(imp, T(0)))) * T(0.5);
  GatingInputs<T> in;
  in.importance = importance;
  const Tensor<T> logits_i = einsum({expert_inputs_outer, w.wg_inner}, p.inner_logits_shape);
  const auto d_i = top2_gating_dense(logits_i, p.inner, in, p.id);
  Shape eeb = Shape{p.eo, p.ei};
  for (const auto& d : p.batch) eeb = eeb.with(d);
  const Tensor<T> expert_inputs = einsum({expert_inputs_outer, d_i.dispatch}, eeb.with(p.ci).with(p.model));
  Tensor<T> h = einsum({expert_inputs, w.wi}, eeb.with(p.ci).with(p.hidden));
  apply_activation(o.activation, h.data(), h.size());
  const Tensor<T> y = einsum({h, w.wo}, eeb.with(p.ci).with(p.model));
  const Tensor<T> expert_outputs_outer = einsum({y, d_i.combine}, p.eio_shape);
  out.outputs = einsum({expert_outputs_outer, d_o.combine}, p.batch.with(p.group).with(p.model));
  out.aux_loss = d_o.aux_loss + d_i.aux_loss;
  out.outer = d_o.stats;
  out.inner = d_i.stats;
}

/// Inner experts, one outer expert at a time, over their filled rows only:
/// eio [Eo, <batch>, Co, M] routed by the inner plan -> y_outer, the same shape.
template <class T>
Tensor<T> hierarchical_inner_experts(const HierarchicalProblem<T>& p, const HierarchicalWeights<T>& w,
                                     const HierarchicalOptions& o, const Tensor<T>& eio, const RoutingPlan<T>& inner) {
  Tensor<T> wi_hold, wo_hold;
  const TensorView<const T> wi = in_order(w.wi, Shape{p.eo, p.ei, p.model, p.hidden}, wi_hold);
  const TensorView<const T> wo = in_order(w.wo, Shape{p.eo, p.ei, p.hidden, p.model}, wo_hold);
  const index_t G = p.batch.num_elements(), Co = p.co.size, M = p.model.size, per = p.ei.size * M * p.hidden.size;
  ExpertOptions cfg;
  cfg.dims = p.id;
  cfg.activation = o.activation;
  ExpertWorkspace<T> ws;
  Tensor<T> y_outer(p.eio_shape);
  Tensor<T> y_e(Shape(), uninitialized);
  for (index_t e = 0; e < p.eo.size; ++e) {
    ExpertWeights<T> we;
    we.wi = borrow(wi.data() + e * per, Shape{p.ei, p.model, p.hidden});
    we.wo = borrow(wo.data() + e * per, Shape{p.ei, p.hidden, p.model});
    const RoutingPlan<T> sub = inner.slice_groups(e * G, G, p.batch);
    const TensorView<const T> x_e = borrow(eio.data() + e * G * Co * M, p.batch.with(p.co).with(p.model));
    experts_sparse_into(y_e, x_e, sub, PackedExperts<T>(we, cfg), ws);
    std::copy(y_e.begin(), y_e.end(), y_outer.data() + e * G * Co * M);
  }
  return y_outer;
}

/// The fast path: the outer plan, the inner plans, one GEMM pair per
/// (outer, inner) expert over filled rows.
template <class T>
void hierarchical_sparse(const HierarchicalProblem<T>& p, const HierarchicalWeights<T>& w, const HierarchicalOptions& o,
                         const TensorView<const T>& logits_o, HierarchicalResult<T>& out) {
  const auto r_o = top2_gating(logits_o, p.outer, {}, p.od);
  const index_t G = r_o.plan.groups(), S = p.group.size, Eo = p.eo.size, Co = p.co.size, M = p.model.size;
  const index_t K = r_o.plan.k;
  // Outer dispatch: [Eo, <batch>, Co, M], zero rows for empty (or zero-weight) slots.
  Tensor<T> eio(p.eio_shape);
  Tensor<T> importance(p.importance_shape);
  for (index_t g = 0; g < G; ++g)
    for (index_t e = 0; e < Eo; ++e)
      for (index_t c = 0; c < r_o.plan.taken[uz(g * Eo + e)]; ++c) {
        const index_t entry = r_o.plan.slot_entry[uz(r_o.plan.slot_index(g, e, c))];
        const T wgt = r_o.plan.weight[uz(entry)];
        if (wgt == T(0)) continue;
        const index_t dst = (e * G + g) * Co + c;
        std::copy_n(p.x.data() + (entry / K) * M, M, eio.data() + dst * M);
        importance[dst] = T(0.5) * ((wgt > T(0.5) ? T(1) : T(0)) + T(1));
      }
  GatingInputs<T> in;
  in.importance = importance;
  const Tensor<T> logits_i = einsum({eio, w.wg_inner}, p.inner_logits_shape);
  const auto r_i = top2_gating(logits_i, p.inner, in, p.id);
  const Tensor<T> y_outer = hierarchical_inner_experts(p, w, o, eio, r_i.plan);
  // Outer combine.
  out.outputs = Tensor<T>(p.batch.with(p.group).with(p.model));
  for (index_t t = 0; t < G * S; ++t)
    for (index_t j = 0; j < K; ++j) {
      const auto i = uz(t * K + j);
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

}  // namespace detail

/// Two-level MoE forward pass; see the file comment. x [<batch>, group,
/// model] -> outputs [<batch>, group, model], aux_loss (outer + inner) and
/// the statistics of both levels. Throws shape_error for weights whose dims
/// disagree, value_error for clashing dim names and as top2_gating.
template <class T>
HierarchicalResult<T> hierarchical_moe_forward(const TensorView<const T>& x_in, const HierarchicalWeights<T>& w,
                                               const HierarchicalOptions& o) {
  detail::HierarchicalProblem<T> p;
  detail::hierarchical_problem(p, x_in, w, o);
  HierarchicalResult<T> out;
  const Tensor<T> logits_o = einsum({p.x, w.wg_outer}, p.batch.with(p.group).with(p.eo));
  if (o.dense) detail::hierarchical_dense(p, w, o, logits_o, out);
  else detail::hierarchical_sparse(p, w, o, logits_o, out);
  out.outputs = transpose(std::move(out.outputs), x_in.shape());
  return out;
}

}  // namespace einmoe
