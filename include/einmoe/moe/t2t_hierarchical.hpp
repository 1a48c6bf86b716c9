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
//   float loss = r.loss(1e-2f);        // (cv^2(importance) + cv^2(load)) * coef
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
  Tensor<T> w_gate;                       ///< [model, outer_experts]
  std::optional<Tensor<T>> w_noise;       ///< [model, outer_experts]; none = no noise (noisy_gating = False)
  Tensor<T> w_gate_inner;                 ///< [outer_experts, model, inner_experts]
  std::optional<Tensor<T>> w_noise_inner; ///< [outer_experts, model, inner_experts]
  Tensor<T> wi;                           ///< [outer_experts, inner_experts, model, hidden]
  Tensor<T> wo;                           ///< [outer_experts, inner_experts, hidden, model]
};

struct T2THierarchicalOptions {
  index_t k_outer = 2, k_inner = 2;  ///< experts per row at each level
  bool train = true;                 ///< false turns the noise off
  double noise_epsilon = 1e-2;
  std::string model_dim = "model";
  std::string hidden_dim = "hidden";
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
  T loss(T loss_coef) const { return (cv_squared(importance) + cv_squared(load)) * loss_coef; }
};

/// tensor2tensor's hierarchical DistributedMixtureOfExperts.Eval; see the
/// file comment. x [<batch>, model] -> outputs [<batch>, model], importance
/// and load [outer_experts, inner_experts].
template <class T>
T2THierarchicalResult<T> t2t_hierarchical_moe_forward(const Tensor<T>& x_in, const T2THierarchicalWeights<T>& w,
                                                      const T2THierarchicalOptions& o,
                                                      const detail::same_t<Tensor<T>>* normal_outer = nullptr,
                                                      const detail::same_t<Tensor<T>>* normal_inner = nullptr) {
  const char* op = "t2t_hierarchical_moe_forward";
  const Dim model = x_in.shape().get(o.model_dim, op);
  const Dim outer = w.w_gate.shape().get(o.outer_dim, op);
  const Dim inner = w.w_gate_inner.shape().get(o.inner_dim, op);
  const Dim hidden = w.wi.shape().get(o.hidden_dim, op);
  const Shape rows_shape = x_in.shape().without({o.model_dim});
  const index_t R = rows_shape.num_elements(), M = model.size, N1 = outer.size, N2 = inner.size;
  const Shape inner_gate{outer, model, inner};
  auto require = [&](const Tensor<T>& t, const Shape& want, const char* name) {
    if (t.rank() != want.rank() || !t.shape().is_subset_of(want))
      detail::raise<shape_error>(op, ": ", name, " ", t.shape(), " is not ", want);
  };
  require(w.w_gate_inner, inner_gate, "w_gate_inner");
  if (w.w_noise_inner) require(*w.w_noise_inner, inner_gate, "w_noise_inner");
  if (w.w_noise.has_value() != w.w_noise_inner.has_value())
    detail::raise<value_error>(op, ": give both w_noise and w_noise_inner (noisy gating) or neither");
  require(w.wi, Shape{outer, inner, model, hidden}, "wi");
  require(w.wo, Shape{outer, inner, hidden, model}, "wo");

  // [rows, model] in row-major order of the batch dims
  Tensor<T> x_hold;
  const Tensor<T>& xr = in_order(x_in, rows_shape.with(model), x_hold);
  const Dim rows("batch", R);
  const Tensor<T> x = Tensor<T>::borrow(xr.data(), Shape{rows, model});

  // Noise draws: given, or outer then inner from one Rng.
  std::optional<Tensor<T>> n1, n2;
  if (w.w_noise) {
    Rng rng(o.seed);
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

  NoisyTopKOptions g1o;
  g1o.k = o.k_outer, g1o.train = o.train, g1o.noise_epsilon = o.noise_epsilon;
  g1o.model_dim = o.model_dim, g1o.experts_dim = o.outer_dim;
  const auto primary = noisy_top_k_gating(x, w.w_gate, w.w_noise ? &*w.w_noise : nullptr, g1o, n1 ? &*n1 : nullptr);

  NoisyTopKOptions g2o = g1o;
  g2o.k = o.k_inner, g2o.experts_dim = o.inner_dim;
  ExpertOptions cfg;
  cfg.experts_dim = o.inner_dim, cfg.model_dim = o.model_dim, cfg.hidden_dim = o.hidden_dim;
  cfg.activation = o.activation;

  T2THierarchicalResult<T> r;
  r.outputs = Tensor<T>(Shape{rows, model});
  r.importance = Tensor<T>(Shape{outer, inner});
  r.load = Tensor<T>(Shape{outer, inner});
  const T eps = static_cast<T>(1e-10);
  std::vector<index_t> sel;
  for (index_t i = 0; i < N1; ++i) {
    sel.clear();
    for (index_t b = 0; b < R; ++b)
      if (primary.gates[b * N1 + i] > T(0)) sel.push_back(b);
    const index_t n = static_cast<index_t>(sel.size());
    const T true_load = static_cast<T>(n);
    const T scale = primary.load[i] / (true_load + eps);
    if (n == 0) continue;  // an empty secondary batch: zero importance and load
    const Dim sub("batch", n);
    Tensor<T> xi(Shape{sub, model}, uninitialized), mult(Shape{sub}, uninitialized);
    std::optional<Tensor<T>> ni;
    if (n2) ni = Tensor<T>(Shape{sub, inner}, uninitialized);
    for (index_t j = 0; j < n; ++j) {
      const index_t b = sel[detail::uz(j)];
      std::copy_n(x.data() + b * M, M, xi.data() + j * M);
      mult[j] = primary.gates[b * N1 + i];
      if (n2) std::copy_n(n2->data() + (i * R + b) * N2, N2, ni->data() + j * N2);
    }
    ExpertWeights<T> ew;
    ew.wi = reshape(slice(w.wi, o.outer_dim, i, 1), Shape{inner, model, hidden});
    ew.wo = reshape(slice(w.wo, o.outer_dim, i, 1), Shape{inner, hidden, model});
    const Tensor<T> wg = reshape(slice(w.w_gate_inner, o.outer_dim, i, 1), Shape{model, inner});
    std::optional<Tensor<T>> wn;
    if (w.w_noise_inner) wn = reshape(slice(*w.w_noise_inner, o.outer_dim, i, 1), Shape{model, inner});
    const auto sec = local_moe_forward(xi, wg, wn ? &*wn : nullptr, ew, g2o, cfg, &mult, ni ? &*ni : nullptr);
    for (index_t j = 0; j < n; ++j) {
      T* out = r.outputs.data() + sel[detail::uz(j)] * M;
      const T* y = sec.outputs.data() + j * M;
      for (index_t m = 0; m < M; ++m) out[m] += y[m];
    }
    for (index_t e = 0; e < N2; ++e) {
      r.importance[i * N2 + e] = sec.importance[e];
      r.load[i * N2 + e] = sec.load[e] * scale;
    }
  }
  r.outputs = transpose(reshape(std::move(r.outputs), rows_shape.with(model)), x_in.shape());
  r.gates = reshape(primary.gates, rows_shape.with(outer));
  return r;
}

}  // namespace einmoe
