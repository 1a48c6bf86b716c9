// einmoe/moe/moe_options.hpp - what an MoE layer is given and returns: its
// weights (MoEWeights), options (MoEOptions) and result (MoEResult). See
// moe/moe_layer.hpp for the layer itself.
#pragma once

#include <cstdint>
#include <optional>

#include "einmoe/experts/experts.hpp"
#include "einmoe/experts/shared_expert.hpp"
#include "einmoe/routers/route.hpp"

namespace einmoe {

/// An MoE layer's weights, as read-only views (the layer lays them out once
/// and keeps nothing of them, so they may be freed after it is built). T is
/// float, double or bfloat16 (checkpoints).
template <class T>
struct MoEWeights {
  TensorView<const T> wg;  ///< router weights [model, experts]
  ExpertWeights<T> experts;
  std::optional<SharedExpertWeights<T>> shared;  ///< added to every token's output
};

/// What an MoE layer computes (see the file comment).
struct MoEOptions {
  RouterOptions router = Top2Options{};  ///< the router and its options (routers/route.hpp)
  MoEDims dims;                          ///< every dim name the layer and its router use
  Activation activation = Activation::relu;
  Precision precision = Precision::fp32;  ///< of the expert weights (kernels/precision.hpp)
  Backend backend = Backend::automatic;   ///< oneDNN or Eigen (kernels/precision.hpp)
  bool dense = false;                     ///< run the dense oracle instead of the sparse fast path
  double dropout = 0.0;                   ///< hidden-layer dropout rate (training-mode parity)
  std::uint64_t dropout_seed = 0;
  index_t max_group_size = 1024;  ///< for inputs without a group dim
  /// Keep a copy of the weights (canonical order, the layer's type) for
  /// the backward pass: forward_train and backward need it.
  bool trainable = false;
  /// Training: keep no hidden pre-activations in the tape; backward
  /// recomputes the experts' first GEMMs instead (MegaBlocks' memory-
  /// optimized MLP). The gradients are the same bits either way.
  bool recompute_hidden = false;
};

template <class T>
struct MoEResult {
  Tensor<T> outputs;  ///< inputs' shape
  T aux_loss = T(0);  ///< the router's balancing loss (0 for expert_choice)
  T z_loss = T(0);    ///< mean logsumexp(logits)^2 (routers topk and expert_choice; 0 for top2)
  RoutingStats stats;
};

namespace detail {

inline ExpertOptions expert_options(const MoEOptions& o) {
  ExpertOptions e;
  e.dims = o.dims;
  e.activation = o.activation;
  e.dropout = o.dropout;
  e.dropout_seed = o.dropout_seed;
  e.precision = o.precision;
  e.backend = o.backend;
  return e;
}

}  // namespace detail
}  // namespace einmoe
