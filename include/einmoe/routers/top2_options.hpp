// einmoe/routers/top2_options.hpp - the options of the top-2 gatings (fast
// and dense, and Mesh TF's variants), and their validation.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "einmoe/core/random.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/routers/router.hpp"

namespace einmoe {

/// What happens to each token's second choice (Mesh TF's moe_second_policy,
/// lingvo's second_expert_policy).
enum class SecondPolicy {
  all,        ///< always use it
  none,       ///< never use it
  threshold,  ///< use it if gate_2 > threshold
  random,     ///< use it if u < gate_2 / max(threshold, 1e-9), one uniform u per token
  sampling,   ///< choose it as argmax(logits + Gumbel) with the first expert's logit removed
};

/// When the two gates are renormalized to sum to 1.
enum class Normalize {
  before,  ///< before capacity, with +1e-9 (Mesh TF; lingvo legacy_mtf_behavior=True)
  after,   ///< after capacity, where the sum is > 0 (lingvo legacy_mtf_behavior=False)
};

inline const char* to_string(SecondPolicy p) {
  switch (p) {
    case SecondPolicy::all: return "all";
    case SecondPolicy::none: return "none";
    case SecondPolicy::threshold: return "threshold";
    case SecondPolicy::random: return "random";
    default: return "sampling";
  }
}
inline SecondPolicy parse_second_policy(const std::string& s) {
  for (auto p :
       {SecondPolicy::all, SecondPolicy::none, SecondPolicy::threshold, SecondPolicy::random, SecondPolicy::sampling})
    if (s == to_string(p)) return p;
  detail::raise<value_error>("unknown second-expert policy \"", s, "\" (all, none, threshold, random, sampling)");
}

/// Options of top-2 gating (and of its Mesh TF variants,
/// top2_gating_mtf_v1 and truncated_top2_gating). Logits are [<batch dims>,
/// group, experts] in any order (MoEDims names them; the batch dims are all
/// the others).
struct Top2Options {
  /// C slots per expert per group: by default sized from a factor of 1.25
  /// (Mesh TF's moe_capacity_factor_train) by Mesh TF's rule, C = max(min(S,
  /// int(S * cf / E)), 4), for the actual group size on every call.
  CapacitySpec capacity = CapacitySpec::factor(1.25, CapacityRule::mtf);
  SecondPolicy policy = SecondPolicy::all;
  double threshold = 0.2;  ///< for policies threshold and random
  Normalize normalize = Normalize::before;
  bool second_place_loss = false;  ///< add Mesh TF's second-place balancing loss
  std::uint64_t seed = 0;          ///< draws for random / sampling when none are given
  /// Which expert wins a tie for first or second place: the lowest index
  /// (lingvo, tf.argmax) or the highest (the Mesh TF code in the sources:
  /// mtf.top_1 before September 2019). Ties are real: a zero-initialised
  /// router, duplicated experts, or softmax underflow past a logit gap of ~104.
  Ties ties = Ties::lowest;
};

namespace detail {

/// The top-2 problem: the router problem plus the validated per-token
/// inputs, as views in the logits' layout (copied only when given in
/// another order).
template <class T>
struct GatingProblem : RouterProblem<T> {
  std::optional<TensorView<const T>> importance, uniform, gumbel;  // [<batch>, group] / [.., experts]
  Tensor<T> hold[3];                                               // transposed inputs, when needed
};

/// x as `want` (the same dims in any order): shape_error naming `what` and
/// the dim that differs.
template <class T>
TensorView<const T> conform(const TensorView<const T>& x, const Shape& want, const char* op, const char* what,
                            Tensor<T>& hold) {
  if (x.rank() != want.rank() || !x.shape().is_subset_of(want)) {
    for (const auto& d : want)
      if (!x.shape().has(d.name))
        raise<shape_error>(op, ": ", what, " ", x.shape(), " lacks dim \"", d.name, "\" (expected ", want, ")");
    for (const auto& d : x.shape()) {
      if (!want.has(d.name)) raise<shape_error>(op, ": ", what, " has dim \"", d.name, "\" not in ", want);
      if (want.size_of(d.name) != d.size)
        raise<shape_error>(op, ": dim \"", d.name, "\" has size ", d.size, " in ", what, " but ", want.size_of(d.name),
                           " in the logits");
    }
  }
  return in_order(x, want, hold);
}

/// Checks the logits, options and inputs of a top-2 gating. shape_error /
/// value_error naming `op`.
template <class T>
void make_problem(GatingProblem<T>& p, const TensorView<const T>& logits, const Top2Options& o,
                  const GatingInputs<T>& in, const MoEDims& dims, const char* op, Tensor<T>& logits_hold,
                  const char* importance_name = "importance") {
  static_assert(std::is_floating_point<T>::value, "top-2 gating needs float or double logits");
  if (std::isnan(o.threshold)) raise<value_error>(op, ": threshold is NaN");
  static_cast<RouterProblem<T>&>(p) = router_problem(logits, dims, o.capacity, 2, op, logits_hold);
  const Shape tok = p.batch.with(p.group);
  if (in.importance) {
    p.importance = conform(*in.importance, tok, op, importance_name, p.hold[0]);
    for (auto v : *p.importance)
      if (!std::isfinite(v)) raise<value_error>(op, ": ", importance_name, " contains ", v);
  }
  if (in.uniform) p.uniform = conform(*in.uniform, tok, op, "uniform draws", p.hold[1]);
  if (in.gumbel) p.gumbel = conform(*in.gumbel, p.logits.shape(), op, "gumbel draws", p.hold[2]);
}

/// The draws of policy random / sampling: the given ones, else from the seed
/// of this call (Rng::call_seed(o.seed, call.call)), continuing the stream
/// after call.first_group groups.
template <class T>
Draws<T> top2_draws(const GatingProblem<T>& p, const Top2Options& o, const RouteCall& call) {
  Draws<T> d;
  d.seed = Rng::call_seed(o.seed, call.call);
  if (o.policy == SecondPolicy::random) {
    if (p.uniform) d.given = p.uniform->data();
    d.offset = call.first_group * p.S;
  } else if (o.policy == SecondPolicy::sampling) {
    if (p.gumbel) d.given = p.gumbel->data();
    d.offset = call.first_group * p.S * p.E;
  }
  return d;
}

/// The draws as tensors (the dense oracles): p.uniform / p.gumbel filled in
/// from the call's seed when the policy needs them and none were given.
template <class T>
void draw_dense_inputs(GatingProblem<T>& p, const Top2Options& o, const RouteCall& call) {
  Rng rng(Rng::call_seed(o.seed, call.call));
  if (o.policy == SecondPolicy::random && !p.uniform) {
    rng.skip(static_cast<std::uint64_t>(call.first_group * p.S));
    p.hold[1] = rng.uniform<T>(p.batch.with(p.group));
    p.uniform = TensorView<const T>(p.hold[1]);
  }
  if (o.policy == SecondPolicy::sampling && !p.gumbel) {
    rng.skip(static_cast<std::uint64_t>(call.first_group * p.S * p.E));
    p.hold[2] = rng.gumbel<T>(p.logits.shape());
    p.gumbel = TensorView<const T>(p.hold[2]);
  }
}

}  // namespace detail
}  // namespace einmoe
