// einmoe/moe/local_moe.hpp - tensor2tensor's LocalMixtureOfExperts: noisy
// top-k gating, dropless dispatch (no capacity), one FFN per expert, combine.
//
// x [<batch>, model] -> outputs [<batch>, model], importance and load [experts].
//
// Example:
//   // w_gate, w_noise [model, experts]; experts: ExpertWeights (wi, wo, ...)
//   LocalMoEResult<float> r = local_moe_forward(x, w_gate, &w_noise, experts, gating_opt, cfg);
//   float loss = r.loss(1e-2f);   // (cv^2(importance) + cv^2(load)) * coef
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
  T loss(T loss_coef) const { return (cv_squared(importance) + cv_squared(load)) * loss_coef; }
};

/// t2t LocalMixtureOfExperts.Eval; see the file comment. x [<batch>, model],
/// w_gate and w_noise [model, experts], per_example_multiplier [<batch>],
/// normal draws [<batch>, experts] -> outputs [<batch>, model], gates
/// [<batch>, experts], importance and load [experts].
template <class T>
LocalMoEResult<T> local_moe_forward(const Tensor<T>& x, const Tensor<T>& w_gate, const detail::same_t<Tensor<T>>* w_noise,
                                    const ExpertWeights<T>& experts, const NoisyTopKOptions& gating,
                                    const ExpertOptions& cfg, const detail::same_t<Tensor<T>>* per_example_multiplier = nullptr,
                                    const detail::same_t<Tensor<T>>* normal = nullptr) {
  auto g = noisy_top_k_gating(x, w_gate, w_noise, gating, normal);
  LocalMoEResult<T> out;
  out.gates = per_example_multiplier ? multiply(g.gates, *per_example_multiplier, g.gates.shape()) : std::move(g.gates);
  out.load = std::move(g.load);
  out.importance = sum_to(out.gates, Shape{out.gates.dim(gating.experts_dim)});
  const auto plan = plan_from_gates(out.gates, gating.experts_dim, gating.k);
  const Dim model = x.dim(gating.model_dim);
  const Shape rows = x.shape().without({gating.model_dim});
  Tensor<T> hold;
  const Tensor<T>& xr = in_order(x, rows.with(model), hold);
  const Tensor<T> flat = Tensor<T>::borrow(xr.data(), Shape{plan.group, model});
  ExpertOptions c = cfg;
  c.experts_dim = gating.experts_dim;
  c.model_dim = gating.model_dim;
  out.outputs = transpose(reshape(experts_sparse(flat, plan, experts, c), rows.with(model)), x.shape());
  return out;
}

}  // namespace einmoe
