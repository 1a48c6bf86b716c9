// einmoe/moe/t2t_hierarchical.hpp - tensor2tensor's hierarchical
// DistributedMixtureOfExperts (secondary_gating_hp given), on one process:
// noisy top-k gating at both levels, dropless dispatch, FFN experts.
//
// Example:
//   T2THierarchicalWeights<float> w;   // w_gate [model, outer_experts], w_noise (optional),
//   w.w_gate = w_gate;                 // w_gate_inner / w_noise_inner [outer_experts, model, inner_experts],
//   w.w_gate_inner = w_gate_inner;     // wi [outer_experts, inner_experts, model, hidden], wo [.., hidden, model]
//   w.wi = wi;
//   w.wo = wo;
//   auto r = t2t_hierarchical_moe_forward(x, w, opt);   // x [<batch>, model]
//   Tensor<float> y = r.outputs;       // [<batch>, model]
//   Tensor<float> load = r.load;       // [outer_experts, inner_experts], as r.importance
//   float aux = r.aux_loss(1e-2f);     // (cv^2(importance) + cv^2(load)) * coef
//
// As the source's Eval: the primary gates g1 [<batch>, outer] come from
// noisy top-k gating (opt.outer); the rows with g1[., i] > 0 go, in batch
// order, to secondary mixture i, a LocalMixtureOfExperts whose gates are
// multiplied by g1[., i] (per_example_multiplier); the outputs are summed
// over the primary experts without multiplying by g1 again. importance[i]
// is secondary i's batchwise sum of its (multiplied) gates; load[i] is its
// smooth load times primary_smooth_load[i] / (primary_true_load[i] + 1e-10),
// where the true load counts the rows with g1[., i] > 0.
//
// Noise draws (standard normal): normal_outer [<batch>, outer_experts] and
// normal_inner [outer_experts, <batch>, inner_experts] (secondary i reads the
// rows it receives). Not given, they are drawn from opt.seed: the outer
// tensor first, then the inner, in row-major order from one Rng.
#pragma once

#include <optional>
#include <vector>

#include "einmoe/core/random.hpp"
#include "einmoe/moe/local_moe.hpp"
#include "einmoe/ops/manip.hpp"

namespace einmoe {

template <class T>
struct T2THierarchicalWeights {
  TensorView<const T> w_gate;                        ///< [model, outer_experts]
  std::optional<TensorView<const T>> w_noise;        ///< [model, outer_experts]; none = no noise (noisy_gating = False)
  TensorView<const T> w_gate_inner;                  ///< [outer_experts, model, inner_experts]
  std::optional<TensorView<const T>> w_noise_inner;  ///< [outer_experts, model, inner_experts]
  TensorView<const T> wi;                            ///< [outer_experts, inner_experts, model, hidden]
  TensorView<const T> wo;                            ///< [outer_experts, inner_experts, hidden, model]
};

struct T2THierarchicalOptions {
  index_t k_outer = 2, k_inner = 2;  ///< experts per row at each level
  bool train = true;                 ///< false turns the noise off
  double noise_epsilon = 1e-2;
  MoEDims dims;  ///< the model and hidden dims (the two experts dims are below)
  std::string outer_dim = "outer_experts";
  std::string inner_dim = "inner_experts";
  Activation activation = Activation::relu;  ///< FeedForwardExpert's hidden activation
  std::uint64_t seed = 0;                    ///< noise draws when none are given
};

template <class T>
struct T2THierarchicalResult {
  Tensor<T> outputs;     ///< [<batch>, model]
  Tensor<T> gates;       ///< [<batch>, outer_experts], the primary gates
  Tensor<T> importance;  ///< [outer_experts, inner_experts]
  Tensor<T> load;        ///< [outer_experts, inner_experts]
  /// t2t's balancing loss: (cv^2(importance) + cv^2(load)) * loss_coef.
  /// Throws nothing but std::bad_alloc.
  T aux_loss(T loss_coef) const { return (cv_squared(importance) + cv_squared(load)) * loss_coef; }
};

namespace detail {

/// Checks the weights against each other; returns hidden.
template <class T>
Dim t2t_check_weights(const T2THierarchicalWeights<T>& w, const T2THierarchicalOptions& o, const Dim& model,
                      const Dim& outer, const Dim& inner, const char* op) {
  const Dim hidden = w.wi.shape().get(o.dims.hidden, op);
  const Shape inner_gate{outer, model, inner};
  auto require = [&](const TensorView<const T>& t, const Shape& want, const char* name) {
    if (t.rank() != want.rank() || !t.shape().is_subset_of(want))
      raise<shape_error>(op, ": ", name, " ", t.shape(), " is not ", want);
  };
  require(w.w_gate_inner, inner_gate, "w_gate_inner");
  if (w.w_noise_inner) require(*w.w_noise_inner, inner_gate, "w_noise_inner");
  if (w.w_noise.has_value() != w.w_noise_inner.has_value())
    raise<value_error>(op, ": give both w_noise and w_noise_inner (noisy gating) or neither");
  require(w.wi, Shape{outer, inner, model, hidden}, "wi");
  require(w.wo, Shape{outer, inner, hidden, model}, "wo");
  return hidden;
}

/// The noise draws [rows, outer] and [outer, rows, inner]: the given ones
/// (in any dim order), else outer then inner from one Rng of the seed.
template <class T>
void t2t_noise(const OptionalView<T>& normal_outer, const OptionalView<T>& normal_inner, const Shape& rows_shape,
               const Dim& outer, const Dim& inner, std::uint64_t seed, std::optional<Tensor<T>>& n1,
               std::optional<Tensor<T>>& n2, const char* op) {
  const Dim rows("batch", rows_shape.num_elements());
  auto require = [&](const TensorView<const T>& t, const Shape& want, const char* name) {
    if (t.rank() != want.rank() || !t.shape().is_subset_of(want))
      raise<shape_error>(op, ": ", name, " ", t.shape(), " is not ", want);
  };
  Rng rng(seed);
  if (normal_outer) {
    require(*normal_outer, rows_shape.with(outer), "normal_outer");
    n1 = reshape(transpose(*normal_outer, rows_shape.with(outer)), Shape{rows, outer});
  } else {
    n1 = reshape(rng.normal<T>(rows_shape.with(outer)), Shape{rows, outer});
  }
  Shape full_inner{outer};
  for (const auto& d : rows_shape) full_inner = full_inner.with(d);
  full_inner = full_inner.with(inner);
  if (normal_inner) {
    require(*normal_inner, full_inner, "normal_inner");
    n2 = reshape(transpose(*normal_inner, full_inner), Shape{outer, rows, inner});
  } else {
    n2 = reshape(rng.normal<T>(full_inner), Shape{outer, rows, inner});
  }
}

/// Secondary mixture i on the rows `sel` its primary gate sends it (x [rows,
/// model], n2 [outer, rows, inner] or none): its outputs added into r.outputs,
/// its importance and load (scaled) into row i of r's.
template <class T>
void t2t_secondary(index_t i, const std::vector<index_t>& sel, const TensorView<const T>& x,
                   const NoisyTopKResult<T>& primary, const std::optional<Tensor<T>>& n2,
                   const T2THierarchicalWeights<T>& w, const T2THierarchicalOptions& o, const Dim& inner,
                   const Dim& hidden, T2THierarchicalResult<T>& r) {
  const Dim model = x.shape()[1];
  const index_t R = x.shape()[0].size, M = model.size, N1 = primary.gates.shape()[1].size, N2 = inner.size;
  const index_t n = static_cast<index_t>(sel.size());
  const T scale = primary.load[i] / (static_cast<T>(n) + static_cast<T>(1e-10));
  if (n == 0) return;  // an empty secondary batch: zero importance and load
  const Dim sub("batch", n);
  Tensor<T> xi(Shape{sub, model}, uninitialized), mult(Shape{sub}, uninitialized);
  std::optional<Tensor<T>> ni;
  if (n2) ni = Tensor<T>(Shape{sub, inner}, uninitialized);
  for (index_t j = 0; j < n; ++j) {
    const index_t b = sel[uz(j)];
    std::copy_n(x.data() + b * M, M, xi.data() + j * M);
    mult[j] = primary.gates[b * N1 + i];
    if (n2) std::copy_n(n2->data() + (i * R + b) * N2, N2, ni->data() + j * N2);
  }
  const Tensor<T> wi = reshape(slice(w.wi, o.outer_dim, i, 1), Shape{inner, model, hidden});
  const Tensor<T> wo = reshape(slice(w.wo, o.outer_dim, i, 1), Shape{inner, hidden, model});
  ExpertWeights<T> ew;
  ew.wi = wi;
  ew.wo = wo;
  const Tensor<T> wg = reshape(slice(w.w_gate_inner, o.outer_dim, i, 1), Shape{model, inner});
  std::optional<Tensor<T>> wn;
  if (w.w_noise_inner) wn = reshape(slice(*w.w_noise_inner, o.outer_dim, i, 1), Shape{model, inner});
  NoisyTopKOptions g2o;
  g2o.k = o.k_inner, g2o.train = o.train, g2o.noise_epsilon = o.noise_epsilon;
  ExpertOptions cfg;
  cfg.dims = o.dims;
  cfg.dims.experts = o.inner_dim;
  cfg.activation = o.activation;
  const auto sec = local_moe_forward(xi, wg, wn ? OptionalView<T>(*wn) : std::nullopt, ew, g2o, cfg,
                                     OptionalView<T>(mult), ni ? OptionalView<T>(*ni) : std::nullopt);
  for (index_t j = 0; j < n; ++j) {
    T* out = r.outputs.data() + sel[uz(j)] * M;
    const T* y = sec.outputs.data() + j * M;
    for (index_t m = 0; m < M; ++m) out[m] += y[m];
  }
  for (index_t e = 0; e < N2; ++e) {
    r.importance[i * N2 + e] = sec.importance[e];
    r.load[i * N2 + e] = sec.load[e] * scale;
  }
}

}  // namespace detail

/// tensor2tensor's hierarchical DistributedMixtureOfExperts.Eval; see the
/// file comment. x [<batch>, model] -> outputs [<batch>, model], importance
/// and load [outer_experts, inner_experts]. Throws shape_error for weights
/// or draws whose dims disagree, value_error for w_noise without
/// w_noise_inner (or the reverse) and as noisy_topk_gating.
template <class T>
T2THierarchicalResult<T> t2t_hierarchical_moe_forward(const TensorView<const T>& x_in,
                                                      const T2THierarchicalWeights<T>& w,
                                                      const T2THierarchicalOptions& o,
                                                      const OptionalView<T>& normal_outer = std::nullopt,
                                                      const OptionalView<T>& normal_inner = std::nullopt) {
  const char* op = "t2t_hierarchical_moe_forward";
  const Dim model = x_in.shape().get(o.dims.model, op);
  const Dim outer = w.w_gate.shape().get(o.outer_dim, op);
  const Dim inner = w.w_gate_inner.shape().get(o.inner_dim, op);
  const Dim hidden = detail::t2t_check_weights(w, o, model, outer, inner, op);
  const Shape rows_shape = x_in.shape().without({o.dims.model});
  const index_t R = rows_shape.num_elements(), N1 = outer.size;
  // [rows, model] in row-major order of the batch dims
  Tensor<T> x_hold;
  const Dim rows("batch", R);
  const TensorView<const T> x = reshape(detail::in_order(x_in, rows_shape.with(model), x_hold), Shape{rows, model});
  std::optional<Tensor<T>> n1, n2;
  if (w.w_noise) detail::t2t_noise(normal_outer, normal_inner, rows_shape, outer, inner, o.seed, n1, n2, op);

  NoisyTopKOptions g1o;
  g1o.k = o.k_outer, g1o.train = o.train, g1o.noise_epsilon = o.noise_epsilon;
  MoEDims outer_dims = o.dims;
  outer_dims.experts = o.outer_dim;
  const OptionalView<T> draws1 = n1 ? OptionalView<T>(*n1) : std::nullopt;
  const auto primary = noisy_topk_gating(x, w.w_gate, w.w_noise, g1o, draws1, outer_dims);

  T2THierarchicalResult<T> r;
  r.outputs = Tensor<T>(Shape{rows, model});
  r.importance = Tensor<T>(Shape{outer, inner});
  r.load = Tensor<T>(Shape{outer, inner});
  std::vector<index_t> sel;
  for (index_t i = 0; i < N1; ++i) {
    sel.clear();
    for (index_t b = 0; b < R; ++b)
      if (primary.gates[b * N1 + i] > T(0)) sel.push_back(b);
    detail::t2t_secondary(i, sel, x, primary, n2, w, o, inner, hidden, r);
  }
  r.outputs = transpose(reshape(std::move(r.outputs), rows_shape.with(model)), x_in.shape());
  r.gates = reshape(Tensor<T>(primary.gates), rows_shape.with(outer));
  return r;
}

}  // namespace einmoe
