// einmoe/routers/noisy_topk.hpp - tensor2tensor's noisy top-k gating
// (Shazeer et al. 2017, "Outrageously large neural networks").
//
//   x [<batch>, model], w_gate and w_noise [model, experts]:
//   clean  = x . w_gate
//   stddev = (softplus(x . w_noise) + noise_epsilon) * [train]
//   noisy  = clean + N(0, 1) * stddev          (logits = noisy, or clean without noise)
//   gates  = softmax over each row's top k logits, scattered back, zero elsewhere
//   importance[e] = sum of gates[.., e]
//   load[e] = sum over rows of P(e stays in the top k under new noise)
//             = Phi((clean - threshold) / stddev), threshold = the (k+1)-th
//               largest noisy logit if e is in the top k, else the k-th;
//             without noise (or k = experts): the count of gates > 0.
//   aux_loss = (cv_squared(importance) + cv_squared(load)) * loss_coef
//
// Example:
//   NoisyTopKOptions o;
//   o.k = 2;
//   auto r = noisy_topk_gating(x, w_gate, w_noise, o);       // normal draws from o.seed; r.gates [batch, experts]
//   SparseDispatcher<float> d(r.gates, "batch", "experts");  // dropless dispatch
//
// The top-k order is t2t's: larger first, ties to the lower index.
#pragma once

#include <cmath>
#include <string>

#include "einmoe/core/random.hpp"
#include "einmoe/ops/einsum.hpp"
#include "einmoe/ops/elementwise.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/ops/softmax.hpp"
#include "einmoe/routers/losses.hpp"
#include "einmoe/routers/router.hpp"

namespace einmoe {

/// Options of noisy top-k gating (dims: MoEDims' model and experts).
struct NoisyTopKOptions {
  index_t k = 2;                ///< experts per row
  bool train = true;            ///< false turns the noise off (stddev 0)
  double noise_epsilon = 1e-2;  ///< added to the softplus of the noise logits
  std::uint64_t seed = 0;       ///< normal draws when none are given
};

template <class T>
struct NoisyTopKResult {
  Tensor<T> gates;       ///< [<batch>, experts], k nonzeros per row
  Tensor<T> importance;  ///< [experts], sum of gates
  Tensor<T> load;        ///< [experts], smooth load estimate (or true load without noise)
  /// t2t's balancing loss: (cv^2(importance) + cv^2(load)) * loss_coef.
  /// Throws nothing but std::bad_alloc.
  T aux_loss(T loss_coef) const { return (cv_squared(importance) + cv_squared(load)) * loss_coef; }
};

/// Noisy top-k gating: x [<batch>, model], w_gate and w_noise [model,
/// experts] -> gates [<batch>, experts], importance and load [experts].
/// No w_noise means no noise (t2t's noisy_gating = false); `normal`
/// (optional) holds standard-normal draws [<batch>, experts], else they
/// come from o.seed. Throws shape_error for dims that disagree, value_error
/// for k outside [1, E] or a negative noise_epsilon.
template <class T>
NoisyTopKResult<T> noisy_topk_gating(const TensorView<const T>& x, const TensorView<const T>& w_gate,
                                     const OptionalView<T>& w_noise, const NoisyTopKOptions& o,
                                     const OptionalView<T>& normal = std::nullopt, const MoEDims& dims = {}) {
  static_assert(std::is_floating_point<T>::value, "noisy_topk_gating needs float or double");
  const char* op = "noisy_topk_gating";
  x.shape().require(dims.model, op);
  const Dim experts = w_gate.shape().get(dims.experts, op);
  const index_t E = experts.size;
  if (o.k < 1 || o.k > E)
    detail::raise<value_error>(op, ": k = ", o.k, " must be in [1, ", E, "] (dim \"", experts.name, "\")");
  if (!(o.noise_epsilon >= 0)) detail::raise<value_error>(op, ": noise_epsilon ", o.noise_epsilon, " must be >= 0");
  const Shape rows = x.shape().without({dims.model});
  const Shape out_shape = rows.with(experts);
  const Tensor<T> clean = einsum({x, w_gate}, out_shape);
  const index_t R = rows.num_elements();
  const bool noisy = w_noise.has_value();
  Tensor<T> stddev, noisy_logits;
  if (noisy) {
    if (w_noise->shape().size_of(dims.experts, op) != E)
      detail::raise<shape_error>(op, ": dim \"", dims.experts, "\" differs between w_gate and w_noise");
    const Tensor<T> raw = einsum({x, *w_noise}, out_shape);
    Tensor<T> draws;
    if (normal) {
      if (normal->shape() != out_shape) {
        if (normal->rank() != out_shape.rank() || !normal->shape().is_subset_of(out_shape))
          detail::raise<shape_error>(op, ": normal draws ", normal->shape(), " do not match ", out_shape);
      }
      draws = transpose(*normal, out_shape);
    } else {
      draws = Rng(o.seed).normal<T>(out_shape);
    }
    const T eps = static_cast<T>(o.noise_epsilon), on = o.train ? T(1) : T(0);
    stddev = map(raw, [&](T v) { return (scalar::softplus(v) + eps) * on; });
    noisy_logits = clean + draws * stddev;
  }
  const TensorView<const T>& logits = noisy ? noisy_logits : clean;
  const index_t m = std::min(o.k + 1, E);
  const auto top = topk(logits, dims.experts, Dim("noisy_topk", m));  // [rows, m]

  NoisyTopKResult<T> r;
  r.gates = Tensor<T>(out_shape);
  r.importance = Tensor<T>(Shape{experts});
  r.load = Tensor<T>(Shape{experts});
  std::vector<T> sm(detail::uz(o.k));
  for (index_t i = 0; i < R; ++i) {
    const T* tv = top.values.data() + i * m;
    const std::int64_t* ti = top.indices.data() + i * m;
    detail::softmax_row(tv, sm.data(), o.k, 1);
    for (index_t j = 0; j < o.k; ++j) r.gates[i * E + ti[j]] += sm[detail::uz(j)];
  }
  for (index_t i = 0; i < R; ++i)
    for (index_t e = 0; e < E; ++e) r.importance[e] += r.gates[i * E + e];
  if (noisy && o.k < E) {
    // P(in top k): the threshold a logit must beat depends on whether it is in already.
    const T sqrt2 = static_cast<T>(1.41421356237309504880);
    auto cdf = [&](T v, T sd) { return T(0.5) * (T(1) + std::erf(v / (sqrt2 * sd + static_cast<T>(1e-20)))); };
    for (index_t i = 0; i < R; ++i) {
      const T thr_in = top.values[i * m + o.k], thr_out = top.values[i * m + o.k - 1];
      for (index_t e = 0; e < E; ++e) {
        const index_t p = i * E + e;
        const bool is_in = noisy_logits[p] > thr_in;
        r.load[e] += is_in ? cdf(clean[p] - thr_in, stddev[p]) : cdf(clean[p] - thr_out, stddev[p]);
      }
    }
  } else {
    for (index_t i = 0; i < R; ++i)
      for (index_t e = 0; e < E; ++e) r.load[e] += r.gates[i * E + e] > T(0) ? T(1) : T(0);
  }
  return r;
}

}  // namespace einmoe
