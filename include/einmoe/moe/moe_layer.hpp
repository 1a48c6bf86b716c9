// einmoe/moe/moe_layer.hpp - the MoE feed-forward layer: gating, dispatch,
// experts, combine.
//
//   MoEOptions opt;
//   opt.gating.capacity = Dim{"expert_capacity", 160};
//   MoELayer<float> layer(weights, opt);         // wg [model, experts], wi, wo (+ bi, bo)
//   auto out = layer.forward(x);                 // x [batch, group, model]
//   out.outputs;    // [batch, group, model]
//   out.aux_loss;   // balancing loss
//   out.stats;      // per-expert load, dropped fractions
//
// Inputs are [<batch dims>, group, model] (dims named by the options). Inputs
// without the group dim, e.g. [batch, length, model], are flattened to
// tokens and split into groups of at most `max_group_size` with Mesh TF's
// rule; the outputs come back in the input's shape.
//
// The fast path (default) routes with a sparse plan and runs each expert's
// GEMMs over its filled rows only; `dense = true` runs the sources' one-hot
// einsums instead (the oracle; same numbers, far slower).
#pragma once

#include <mutex>
#include <optional>

#include "einmoe/moe/capacity.hpp"
#include "einmoe/moe/experts.hpp"
#include "einmoe/moe/top2_gating.hpp"
#include "einmoe/moe/top2_gating_dense.hpp"

namespace einmoe {

template <class T>
struct MoEWeights {
  Tensor<T> wg;  ///< gating weights [model, experts]
  ExpertWeights<T> experts;
};

struct MoEOptions {
  Top2Options gating;                   ///< capacity, policy, normalize, group/experts dim names
  std::string model_dim = "model";
  std::string hidden_dim = "hidden";
  Activation activation = Activation::relu;
  bool dense = false;                   ///< run the dense oracle instead of the sparse fast path
  double dropout = 0.0;                 ///< hidden-layer dropout rate (training-mode parity)
  std::uint64_t dropout_seed = 0;
  index_t max_group_size = 1024;        ///< for inputs without a group dim
};

template <class T>
struct MoEOutput {
  Tensor<T> outputs;  ///< inputs' shape
  T aux_loss = T(0);
  RoutingStats stats;
};

/// One MoE feed-forward layer forward pass into `out` (whose buffers are
/// reused when the shapes match), with scratch memory from `ws`.
template <class T>
void moe_forward_into(MoEOutput<T>& out, const Tensor<T>& inputs, const MoEWeights<T>& w, const MoEOptions& opt,
                      const GatingInputs<T>& extras, ExpertWorkspace<T>& ws) {
  const Top2Options& g = opt.gating;
  inputs.shape().require(opt.model_dim, "moe_forward");
  // Group the tokens if the inputs are not grouped yet.
  Tensor<T> grouped;
  Shape flat;  // ungrouped inputs: their token dims, then the model dim
  const bool has_groups = inputs.shape().has(g.group_dim);
  if (!has_groups) {
    const Shape rest = inputs.shape().without({opt.model_dim});
    const index_t n = rest.num_elements();
    if (n == 0) detail::raise<shape_error>("moe_forward: inputs ", inputs.shape(), " hold no tokens");
    const GroupSplit split = split_into_groups(n, opt.max_group_size);
    const Dim model = inputs.dim(opt.model_dim);
    flat = rest.with(model);
    grouped = reshape(transpose(inputs, flat), Shape{{"moe_groups", split.num_groups}, {g.group_dim, split.group_size}, model});
  }
  const Tensor<T>& x = has_groups ? inputs : grouped;
  w.wg.shape().require(opt.model_dim, "moe_forward");
  const Dim experts = w.wg.shape().get(g.experts_dim, "moe_forward");
  const Shape logits_shape = x.shape().without({opt.model_dim}).with(experts);
  const Tensor<T> logits = einsum({x, w.wg}, logits_shape);
  ExpertConfig cfg;
  cfg.experts_dim = g.experts_dim;
  cfg.model_dim = opt.model_dim;
  cfg.hidden_dim = opt.hidden_dim;
  cfg.activation = opt.activation;
  cfg.dropout = opt.dropout;
  cfg.dropout_seed = opt.dropout_seed;

  if (opt.dense) {
    auto d = top2_gating_dense(logits, g, extras);
    out.outputs = experts_dense(x, d.dispatch, d.combine, w.experts, cfg);
    out.aux_loss = d.aux_loss;
    out.stats = std::move(d.stats);
  } else {
    auto r = top2_gating(logits, g, extras);
    experts_sparse_into(out.outputs, x, r.plan, w.experts, cfg, ws);
    out.aux_loss = r.aux_loss;
    out.stats = std::move(r.stats);
  }
  // Back to the inputs' layout.
  if (!has_groups) {
    out.outputs = transpose(reshape(std::move(out.outputs), flat), inputs.shape());
  } else if (out.outputs.shape() != inputs.shape()) {
    out.outputs = transpose(out.outputs, inputs.shape());
  }
}

/// One MoE feed-forward layer forward pass; see the file comment.
template <class T>
MoEOutput<T> moe_forward(const Tensor<T>& inputs, const MoEWeights<T>& w, const MoEOptions& opt,
                         const GatingInputs<T>& extras = {}) {
  MoEOutput<T> out;
  ExpertWorkspace<T> ws;
  moe_forward_into(out, inputs, w, opt, extras, ws);
  return out;
}

/// A layer object holding its weights, options and scratch memory.
///
/// forward_into reuses the output's buffers and the layer's workspace, so a
/// steady-state forward pass allocates nothing of the size of the
/// activations. Concurrent calls on one layer are safe: a call that finds
/// the workspace busy uses a fresh one.
template <class T>
class MoELayer {
 public:
  MoELayer(MoEWeights<T> weights, MoEOptions options) : w_(std::move(weights)), opt_(std::move(options)) {}
  MoEOutput<T> forward(const Tensor<T>& inputs, const GatingInputs<T>& extras = {}) const {
    MoEOutput<T> out;
    forward_into(out, inputs, extras);
    return out;
  }
  void forward_into(MoEOutput<T>& out, const Tensor<T>& inputs, const GatingInputs<T>& extras = {}) const {
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (lock.owns_lock()) {
      moe_forward_into(out, inputs, w_, opt_, extras, ws_);
    } else {
      ExpertWorkspace<T> ws;
      moe_forward_into(out, inputs, w_, opt_, extras, ws);
    }
  }
  const MoEWeights<T>& weights() const { return w_; }
  const MoEOptions& options() const { return opt_; }

 private:
  MoEWeights<T> w_;
  MoEOptions opt_;
  mutable ExpertWorkspace<T> ws_;
  mutable std::mutex mutex_;
};

}  // namespace einmoe
