// einmoe/moe/local_moe.hpp - tensor2tensor's LocalMixtureOfExperts: noisy
// top-k gating, dropless dispatch (no capacity), one FFN per expert, combine.
//
// x [<batch>, model] -> outputs [<batch>, model], importance and load [experts].
//
// Example:
//   // w_gate, w_noise [model, experts]; experts: ExpertWeights (wi, wo, ...)
//   LocalMoEResult<float> r = local_moe_forward(x, w_gate, w_noise, experts, gating_opt, cfg);
//   float aux = r.aux_loss(1e-2f);   // (cv^2(importance) + cv^2(load)) * coef
//
// per_example_multiplier [<batch>] (optional) scales every row's gates, as
// t2t does for the secondary mixtures of a hierarchical MoE; importance then
// reflects it, load does not.
#pragma once

#include "einmoe/experts/experts.hpp"
#include "einmoe/routers/noisy_topk.hpp"
#include "einmoe/routers/sparse_dispatcher.hpp"

namespace einmoe {

template <class T>
struct LocalMoEResult {
  Tensor<T> outputs;     ///< [<batch>, model]
  Tensor<T> gates;       ///< [<batch>, experts], after the multiplier
  Tensor<T> importance;  ///< [experts]
  Tensor<T> load;        ///< [experts]
  /// t2t's balancing loss: (cv^2(importance) + cv^2(load)) * loss_coef.
  /// Throws nothing but std::bad_alloc.
  T aux_loss(T loss_coef) const { return (cv_squared(importance) + cv_squared(load)) * loss_coef; }
};

/// t2t LocalMixtureOfExperts.Eval; see the file comment. x [<batch>, model],
/// w_gate and w_noise [model, experts], per_example_multiplier [<batch>],
/// normal draws [<batch>, experts] -> outputs [<batch>, model], gates
/// [<batch>, experts], importance and load [experts]. No w_noise: no noise.
/// The dims are cfg.dims'. Throws as noisy_topk_gating and experts_sparse.
template <class T>
LocalMoEResult<T> local_moe_forward(const TensorView<const T>& x, const TensorView<const T>& w_gate,
                                    const OptionalView<T>& w_noise, const ExpertWeights<T>& experts,
                                    const NoisyTopKOptions& gating, const ExpertOptions& cfg,
                                    const OptionalView<T>& per_example_multiplier = std::nullopt,
                                    const OptionalView<T>& normal = std::nullopt) {
  const MoEDims& dims = cfg.dims;
  auto g = noisy_topk_gating(x, w_gate, w_noise, gating, normal, dims);
  LocalMoEResult<T> out;
  out.gates = per_example_multiplier ? multiply(g.gates, *per_example_multiplier, g.gates.shape()) : std::move(g.gates);
  out.load = std::move(g.load);
  out.importance = sum_to(out.gates, Shape{out.gates.dim(dims.experts)});
  const auto plan = plan_from_gates(out.gates, gating.k, dims);
  const Dim model = x.dim(dims.model);
  const Shape rows = x.shape().without({dims.model});
  Tensor<T> hold;
  const TensorView<const T> flat = reshape(detail::in_order(x, rows.with(model), hold), Shape{plan.group, model});
  out.outputs = transpose(reshape(experts_sparse(flat, plan, experts, cfg), rows.with(model)), x.shape());
  return out;
}

}  // namespace einmoe
