// einmoe/training/router_backward.hpp - the gradient of the routers with
// respect to their logits.
//
// Example:
//   // logits [batch, group, experts] (double), o a TopKOptions
//   RouterResult<double> r;
//   RouterWorkspace<double> ws;
//   route_into(r, logits, o, {}, MoEDims{}, RouteCall{}, ws);
//   std::vector<double> dweight(r.plan.weight.size(), 1.0);   // dL/d(each plan weight)
//   Tensor<double> dlogits = route_backward(logits, r, o, {}, dweight, {0.01, 0.001});
//
// L = (the caller's function of the plan's weights) + aux_coef * aux_loss +
// z_coef * z_loss, as the sources differentiate their dense formulations:
// the discrete choices (which experts, which slots, capacity drops, the
// second-expert policy's draws) are constants; the gradient flows through
// the scores (softmax or sigmoid), every renormalization and the scale. A
// dropped choice's weight is 0 whatever the logits, so it passes nothing
// back from the combine, but its token still reaches the logits through the
// losses. The selection bias and the expert-group limit only select: they
// get and pass no gradient. (docs/gradients.md states the rules per router.)
#pragma once

#include <cmath>
#include <variant>
#include <vector>

#include "einmoe/routers/route.hpp"

namespace einmoe {

/// The coefficients of the balancing losses in the objective
/// L = <outputs, grad_outputs> + aux_loss * aux_loss + z_loss * z_loss.
struct LossCoefficients {
  double aux_loss = 0.0;
  double z_loss = 0.0;
};

namespace detail {

/// dl += the softmax's backward: s * (ds - <ds, s>).
template <class T>
void softmax_backward_add(const T* s, const T* ds, index_t E, T* dl) {
  T dot = T(0);
  for (index_t e = 0; e < E; ++e) dot += ds[e] * s[e];
  for (index_t e = 0; e < E; ++e) dl[e] += s[e] * (ds[e] - dot);
}

/// dl += the z loss's gradient of one token: coef * 2 lse(l) softmax(l) / N
/// (s is scratch [E]).
template <class T>
void z_loss_backward_add(const T* l, index_t E, T coef_over_n, T* s, T* dl) {
  if (coef_over_n == T(0)) return;
  score_row(l, E, Score::softmax, s);
  const T lse = logsumexp_row(l, E);
  for (index_t e = 0; e < E; ++e) dl[e] += T(2) * coef_over_n * lse * s[e];
}

/// (w1, w2) -> (w1, w2) / (w1 + w2 + eps) backward: dw_k = (dn_k - sum_i dn_i n_i) / d.
template <class T>
void normalize_backward(const T* n, T* dn, index_t k, T d) {
  T dot = T(0);
  for (index_t j = 0; j < k; ++j) dot += dn[j] * n[j];
  for (index_t j = 0; j < k; ++j) dn[j] = (dn[j] - dot) / d;
}

/// dl += the scores' backward (softmax or sigmoid).
template <class T>
void topk_scores_backward_add(const T* s, const T* ds, index_t E, Score score, T* dl) {
  if (score == Score::softmax) return softmax_backward_add(s, ds, E, dl);
  for (index_t e = 0; e < E; ++e) dl[e] += ds[e] * s[e] * (T(1) - s[e]);
}

/// Top-2's second-place loss, one token: q = w / (sum w + 1e-9) with w the
/// raw gates without the first expert (i1; -1: none removed); dL/dq_e = f *
/// m2_e. Adds dL/d raw into draw.
template <class T>
void second_place_backward_add(const T* raw, index_t E, index_t i1, T f, const T* m2, T* draw) {
  T z = T(0);
  for (index_t e = 0; e < E; ++e) z += e == i1 ? T(0) : raw[e];
  const T d = z + T(1e-9);
  T dot = T(0);
  for (index_t e = 0; e < E; ++e) dot += f * m2[e] * (e == i1 ? T(0) : raw[e]) / d;
  for (index_t e = 0; e < E; ++e)
    if (e != i1) draw[e] += (f * m2[e] - dot) / d;
}

/// value_error naming op unless logits, r and dweight agree (and, when
/// `choices`, r holds the router's choices before capacity).
template <class T>
void check_backward_sizes(const TensorView<const T>& logits, const RouterResult<T>& r, const std::vector<T>& dweight,
                          bool choices, const char* op) {
  const auto& p = r.plan;
  const index_t N = p.tokens();
  if (logits.size() != N * p.experts.size)
    raise<shape_error>(op, ": logits ", logits.shape(), " do not match the plan's ", N, " tokens and ", p.experts);
  if (static_cast<index_t>(dweight.size()) != N * p.k)
    raise<shape_error>(op, ": ", dweight.size(), " weight gradients for a plan of ", N * p.k, " choices");
  if (choices && static_cast<index_t>(r.choice.size()) != N * p.k)
    raise<value_error>(op, ": the routing result holds no choices (route it with route_into)");
}

}  // namespace detail

/// Top-k (topk.hpp): `r` is what route_into gave for `logits` [<batch>,
/// group, experts] (canonical order), dweight [G*S*k] is dL/d(r.plan.weight).
/// Returns dlogits [<batch>, group, experts]. Throws value_error if r lacks
/// its choices or the sizes disagree.
template <class T>
Tensor<T> route_backward(const TensorView<const T>& logits, const RouterResult<T>& r, const TopKOptions& o,
                         const GatingInputs<T>&, const std::vector<T>& dweight, const LossCoefficients& c) {
  using detail::uz;
  const auto& plan = r.plan;
  const index_t G = plan.groups(), S = plan.group.size, E = plan.experts.size, K = plan.k, N = G * S;
  detail::check_backward_sizes(logits, r, dweight, true, "route_backward (topk)");
  Tensor<T> dl(logits.shape());
  const T aux_scale = static_cast<T>(c.aux_loss) * static_cast<T>(E) / static_cast<T>(std::max<index_t>(G, 1));
  const T z_over_n = N > 0 ? static_cast<T>(c.z_loss) / static_cast<T>(N) : T(0);
  detail::parallel_items(G, [&](index_t g) {  // (groups are independent)
    std::vector<T> s(uz(E)), ds(uz(E)), w(uz(K)), dw(uz(K)), frac(uz(E));
    std::fill(frac.begin(), frac.end(), T(0));  // tokens choosing e: a constant of the loss
    for (index_t t = g * S; t < (g + 1) * S; ++t)
      for (index_t j = 0; j < K; ++j) frac[uz(r.choice[uz(t * K + j)])] += T(1);
    for (index_t t = g * S; t < (g + 1) * S; ++t) {
      const T* l = logits.data() + t * E;
      const std::int32_t* ch = r.choice.data() + t * K;
      const auto kept = [&](index_t j) { return plan.expert[uz(t * K + j)] >= 0; };
      detail::score_row(l, E, o.score, s.data());
      std::fill(ds.begin(), ds.end(), T(0));
      // weights: s[choice] -> (topk: / their sum) -> capacity -> (kept: / the kept sum) -> * scale
      for (index_t j = 0; j < K; ++j) {
        w[uz(j)] = kept(j) || o.normalize != TopKNormalize::kept ? s[uz(ch[j])] : T(0);
        dw[uz(j)] = kept(j) ? dweight[uz(t * K + j)] * static_cast<T>(o.scale) : T(0);
      }
      if (o.normalize != TopKNormalize::none) {
        T sum = T(0);
        for (index_t j = 0; j < K; ++j) sum += w[uz(j)];
        if (o.normalize == TopKNormalize::topk) sum += static_cast<T>(1e-20);
        if (o.normalize == TopKNormalize::kept) sum = std::max(sum, std::numeric_limits<T>::epsilon());
        for (index_t j = 0; j < K; ++j) w[uz(j)] /= sum;
        detail::normalize_backward(w.data(), dw.data(), K, sum);
        if (o.normalize == TopKNormalize::kept)
          for (index_t j = 0; j < K; ++j)
            if (!kept(j)) dw[uz(j)] = T(0);
      }
      for (index_t j = 0; j < K; ++j) ds[uz(ch[j])] += dw[uz(j)];
      // aux: (E / G) sum_e (frac_e / S) (q_e / S), q the scores (sigmoid: normalized to sum 1)
      if (aux_scale != T(0) && S > 0) {
        const T f = aux_scale / (static_cast<T>(S) * static_cast<T>(S));
        T sum = T(1), dot = T(0);
        if (o.score == Score::sigmoid) {
          sum = T(0);
          for (index_t e = 0; e < E; ++e) sum += s[uz(e)];
          for (index_t e = 0; e < E; ++e) dot += f * frac[uz(e)] * s[uz(e)] / sum;
        }
        for (index_t e = 0; e < E; ++e) ds[uz(e)] += (f * frac[uz(e)] - dot) / sum;
      }
      T* d = dl.data() + t * E;
      detail::topk_scores_backward_add(s.data(), ds.data(), E, o.score, d);
      detail::z_loss_backward_add(l, E, z_over_n, s.data(), d);
    }
  });
  return dl;
}

/// Expert choice (expert_choice.hpp): a taken (token, expert) pair's weight
/// is softmax(logits)[expert]; aux_loss is 0. As the top-k overload.
template <class T>
Tensor<T> route_backward(const TensorView<const T>& logits, const RouterResult<T>& r, const ExpertChoiceOptions&,
                         const GatingInputs<T>&, const std::vector<T>& dweight, const LossCoefficients& c) {
  using detail::uz;
  const auto& plan = r.plan;
  const index_t E = plan.experts.size, N = plan.tokens();
  detail::check_backward_sizes(logits, r, dweight, false, "route_backward (expert-choice)");
  Tensor<T> dl(logits.shape());
  const T z_over_n = N > 0 ? static_cast<T>(c.z_loss) / static_cast<T>(N) : T(0);
  detail::parallel_items(N, [&](index_t t) {  // (tokens are independent)
    std::vector<T> s(uz(E)), ds(uz(E));
    const T* l = logits.data() + t * E;
    T* d = dl.data() + t * E;
    detail::score_row(l, E, Score::softmax, s.data());
    for (index_t e = 0; e < E; ++e) ds[uz(e)] = plan.expert[uz(t * E + e)] >= 0 ? dweight[uz(t * E + e)] : T(0);
    detail::softmax_backward_add(s.data(), ds.data(), E, d);
    detail::z_loss_backward_add(l, E, z_over_n, s.data(), d);
  });
  return dl;
}

/// Top-2 (top2_gating.hpp; Mesh TF and lingvo): per token raw =
/// softmax(logits), gate_k = raw[index_k] (gate_1 = 0 where importance !=
/// 1), the normalizations before or after capacity; the balancing loss
/// through mean(raw) (and the second-place loss through the renormalized
/// raw without the first expert). `in` must be the importance the forward
/// was given (in the logits' canonical [<batch>, group] order). As the
/// top-k overload otherwise; z_loss is 0 for top-2.
template <class T>
Tensor<T> route_backward(const TensorView<const T>& logits, const RouterResult<T>& r, const Top2Options& o,
                         const GatingInputs<T>& in, const std::vector<T>& dweight, const LossCoefficients& c) {
  using detail::uz;
  const auto& plan = r.plan;
  const index_t G = plan.groups(), S = plan.group.size, E = plan.experts.size;
  detail::check_backward_sizes(logits, r, dweight, true, "route_backward (top2)");
  Tensor<T> dl(logits.shape());
  const T eps = T(1e-9);
  const T aux_scale = static_cast<T>(c.aux_loss) * static_cast<T>(E) / static_cast<T>(std::max<index_t>(G, 1));
  const bool after = o.normalize == Normalize::after;
  auto imp = [&](index_t t) { return in.importance ? (*in.importance)[t] : T(1); };
  detail::parallel_items(G, [&](index_t g) {  // (groups are independent)
    std::vector<T> raw(uz(E)), draw(uz(E)), m1(uz(E)), m2(uz(E));
    // the loss's constants: first-choice and (pre-policy) second-choice counts, the importance mean
    std::fill(m1.begin(), m1.end(), T(0));
    std::fill(m2.begin(), m2.end(), T(0));
    T imp_sum = T(0);
    for (index_t t = g * S; t < (g + 1) * S; ++t) {
      if (imp(t) == T(1)) m1[uz(r.choice[uz(t * 2)])] += T(1);
      if (imp(t) > T(0)) m2[uz(r.choice[uz(t * 2 + 1)])] += T(1);
      imp_sum += imp(t);
    }
    const T Sf = static_cast<T>(S), denom = after ? imp_sum / Sf + T(1e-6) : T(1);
    for (index_t t = g * S; t < (g + 1) * S; ++t) {
      const T* l = logits.data() + t * E;
      const index_t i1 = r.choice[uz(t * 2)], i2 = r.choice[uz(t * 2 + 1)];
      const bool has1 = imp(t) == T(1);
      detail::score_row(l, E, Score::softmax, raw.data());
      std::fill(draw.begin(), draw.end(), T(0));
      // gates: (g1, g2) -> (before: / (g1 + g2 + eps)) -> capacity and policy -> (after: / the kept sum)
      T gate[2] = {has1 ? raw[uz(i1)] : T(0), raw[uz(i2)]};
      T dgate[2];
      const bool kept[2] = {plan.expert[uz(t * 2)] >= 0, plan.expert[uz(t * 2 + 1)] >= 0};
      for (int j = 0; j < 2; ++j) dgate[j] = kept[j] ? dweight[uz(t * 2 + j)] : T(0);
      if (o.normalize == Normalize::before) {
        const T d = gate[0] + gate[1] + eps;
        T n[2] = {gate[0] / d, gate[1] / d};
        detail::normalize_backward(n, dgate, 2, d);
      } else {
        T k[2] = {kept[0] ? gate[0] : T(0), kept[1] ? gate[1] : T(0)};
        const T sum = k[0] + k[1];
        if (sum > T(0)) {
          k[0] /= sum, k[1] /= sum;
          detail::normalize_backward(k, dgate, 2, sum);
          for (int j = 0; j < 2; ++j)
            if (!kept[j]) dgate[j] = T(0);
        }
      }
      if (has1) draw[uz(i1)] += dgate[0];
      draw[uz(i2)] += dgate[1];
      if (aux_scale != T(0) && S > 0) {
        // aux = (E / G) sum_e (P1_e / S / denom) (m1_e / S / denom), P1 the sum of raw over has1 tokens
        const T f = aux_scale / (Sf * Sf * denom * denom);
        if (has1)
          for (index_t e = 0; e < E; ++e) draw[uz(e)] += f * m1[uz(e)];
        if (o.second_place_loss)
          detail::second_place_backward_add(raw.data(), E, has1 ? i1 : -1, aux_scale * T(0.5) / (Sf * Sf), m2.data(),
                                            draw.data());
      }
      detail::softmax_backward_add(raw.data(), draw.data(), E, dl.data() + t * E);
    }
  });
  return dl;
}

/// The gradient of any router of a layer (RouterOptions), dispatched.
template <class T>
Tensor<T> route_backward(const TensorView<const T>& logits, const RouterResult<T>& r, const RouterOptions& o,
                         const GatingInputs<T>& in, const std::vector<T>& dweight, const LossCoefficients& c) {
  return std::visit([&](const auto& opt) { return route_backward(logits, r, opt, in, dweight, c); }, o);
}

}  // namespace einmoe
