// einmoe/moe/moe_v0.hpp - Mesh TF's moe_v0: softmax gates, truncated top-2
// gating per sequence, relu experts, and a cv^2 balancing loss.
//
//   inputs [batch, length, model]; each sequence (batch row) is one group.
//   gates = softmax(inputs . wg + bg) over experts
//   C = min(length, int(length * 2 * overhead / experts))       (moe_v0_capacity)
//   combine = truncated top-2 gating of the gates with capacity C
//   outputs = experts (relu, biases as given) dispatched and combined by it
//   importance [batch, experts] = combine summed over length and capacity
//   loss = cv_squared(importance) * loss_coef
//
// The experts map model -> model (moe_v0's output_dim = input_dim case).
#pragma once

#include <optional>
#include <string>

#include "einmoe/experts/experts.hpp"
#include "einmoe/ops/softmax.hpp"
#include "einmoe/routers/capacity.hpp"
#include "einmoe/routers/losses.hpp"
#include "einmoe/routers/truncated_gating.hpp"

namespace einmoe {

template <class T>
struct MoEV0Weights {
  TensorView<const T> wg;                 ///< [model, experts]
  std::optional<TensorView<const T>> bg;  ///< [experts] (Mesh TF's dense layers have biases)
  ExpertWeights<T> experts;               ///< wi, wo (+ bi, bo)
};

struct MoEV0Options {
  MoEDims dims{"length"};  ///< the group dim is the length: one sequence per group
  double loss_coef = 1e-3;
  double overhead = 1.0;
  bool dense = false;  ///< the one-hot formulation (oracle) instead of the sparse plan
};

template <class T>
struct MoEV0Result {
  Tensor<T> outputs;   ///< [batch, length, model]
  T aux_loss = T(0);   ///< cv^2(importance) * loss_coef
  RoutingStats stats;  ///< filled on the sparse path
};

/// Mesh TF's moe_v0 forward pass; see the file comment: inputs [batch,
/// length, model] -> outputs [batch, length, model] and the loss (the cv^2
/// of importance [batch, experts], times loss_coef).
/// Throws shape_error for dims that disagree, value_error when the capacity
/// comes out 0.
template <class T>
MoEV0Result<T> moe_v0_forward(const TensorView<const T>& inputs, const MoEV0Weights<T>& w, const MoEV0Options& o) {
  const char* op = "moe_v0_forward";
  const MoEDims& d = o.dims;
  const Dim length = inputs.shape().get(d.group, op);
  inputs.shape().require(d.model, op);
  const Dim experts = w.wg.shape().get(d.experts, op);
  const Shape logits_shape = inputs.shape().without({d.model}).with(experts);
  Tensor<T> logits = einsum({inputs, w.wg}, logits_shape);
  if (w.bg) logits = logits + *w.bg;
  const Tensor<T> gates = softmax(logits, d.experts);
  const index_t C = moe_v0_capacity(length.size, experts.size, o.overhead);
  if (C < 1)
    detail::raise<value_error>(op, ": capacity int(", length.size, " * 2 * ", o.overhead, " / ", experts.size,
                               ") is 0; use longer sequences, fewer experts or more overhead");
  Top2Options g;
  g.capacity = CapacitySpec::fixed(C);
  ExpertOptions cfg;
  cfg.dims = d;
  cfg.activation = Activation::relu;

  MoEV0Result<T> out;
  const Shape importance_shape = gates.shape().without({d.group});  // [batch..., experts]
  Tensor<T> importance;
  if (o.dense) {
    const Tensor<T> combine = truncated_top2_gating_dense(gates, g, d);
    const Tensor<T> dispatch = cast<T>(not_equal(combine, T(0)));
    out.outputs = experts_dense(inputs, dispatch, combine, w.experts, cfg);
    importance = sum_to(combine, importance_shape);
  } else {
    auto r = truncated_top2_gating(gates, g, d);
    out.outputs = experts_sparse(inputs, r.plan, w.experts, cfg);
    // importance[b, e] = sum of the combine weights of row b routed to e
    importance = Tensor<T>(r.plan.batch.with(experts));
    const index_t S = length.size, E = experts.size;
    for (index_t t = 0; t < r.plan.tokens(); ++t)
      for (index_t j = 0; j < r.plan.k; ++j) {
        const auto i = detail::uz(t * r.plan.k + j);
        if (r.plan.expert[i] >= 0) importance[(t / S) * E + r.plan.expert[i]] += r.plan.weight[i];
      }
    importance = transpose(std::move(importance), importance_shape);
    out.stats = std::move(r.stats);
  }
  out.outputs = transpose(std::move(out.outputs), inputs.shape());
  out.aux_loss = cv_squared(importance) * static_cast<T>(o.loss_coef);
  return out;
}

}  // namespace einmoe
