// einmoe/routers/gating_options.hpp - the options shared by the top-2 gating
// functions (fast and dense), and their validation.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "einmoe/core/tensor.hpp"
#include "einmoe/core/random.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/routers/capacity.hpp"
#include "einmoe/ops/manip.hpp"
#include "einmoe/routers/routing_plan.hpp"

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
  for (auto p : {SecondPolicy::all, SecondPolicy::none, SecondPolicy::threshold, SecondPolicy::random, SecondPolicy::sampling})
    if (s == to_string(p)) return p;
  detail::raise<value_error>("unknown second-expert policy \"", s, "\" (all, none, threshold, random, sampling)");
}

/// Options of top-2 gating. Dims are named by the caller: logits are
/// [<batch dims>, group_dim, experts_dim] (any order; batch dims are all the
/// others).
struct Top2Options {
  /// C slots per expert per group. Size 0 (the default) sizes it from
  /// capacity_factor by capacity_rule for the actual group size on every
  /// call; set a positive size to fix it.
  Dim capacity{"expert_capacity", 0};
  std::string group_dim = "group";     ///< tokens that compete for capacity
  std::string experts_dim = "experts";
  SecondPolicy policy = SecondPolicy::all;
  double threshold = 0.2;              ///< for policies threshold and random
  Normalize normalize = Normalize::before;
  bool second_place_loss = false;      ///< add Mesh TF's second-place balancing loss
  std::uint64_t seed = 0;              ///< draws for random / sampling when none are given
  /// Which expert wins a tie for first or second place: the lowest index
  /// (lingvo, tf.argmax) or the highest (the Mesh TF code in the sources:
  /// mtf.top_1 before September 2019). Ties are real: a zero-initialised
  /// router, duplicated experts, or softmax underflow past a logit gap of ~104.
  Ties ties = Ties::lowest;
  /// Used when capacity's size is 0: Mesh TF's training default 1.25 (its
  /// moe_capacity_factor_train).
  double capacity_factor = 1.25;
  /// Used when capacity's size is 0: Mesh TF's rule, C = max(min(S, int(S *
  /// cf / E)), 4) (see routers/capacity.hpp for the others).
  CapacityRule capacity_rule = CapacityRule::mtf;
};

/// Optional per-token inputs of top-2 gating.
template <class T>
struct GatingInputs {
  /// [<batch>, group]: 1 -> up to two experts, in (0, 1) -> at most one, 0 ->
  /// none (Mesh TF's convention; lingvo's paddings are 1 - padding).
  std::optional<Tensor<T>> importance;
  /// [<batch>, group] uniforms in [0, 1) for policy random.
  std::optional<Tensor<T>> uniform;
  /// [<batch>, group, experts] standard Gumbel draws for policy sampling.
  std::optional<Tensor<T>> gumbel;
};

/// The capacity dim top-2 gating uses for groups of S tokens and E experts:
/// o.capacity when its size is positive, else sized from o.capacity_factor
/// by o.capacity_rule. value_error for a negative size or, without a size,
/// a factor that is not a positive number.
inline Dim resolved_capacity(const Top2Options& o, index_t group_size, index_t experts, const char* op = "top2_gating") {
  if (o.capacity.size < 0)
    detail::raise<value_error>(op, ": capacity \"", o.capacity.name, "\" is ", o.capacity.size, "; must be positive");
  if (o.capacity.size > 0) return o.capacity;
  if (!(o.capacity_factor > 0 && std::isfinite(o.capacity_factor)))
    detail::raise<value_error>(op, ": no capacity: set capacity to a positive size, or capacity_factor (now ",
                               o.capacity_factor, ") to a positive number");
  return Dim(o.capacity.name, capacity_from_factor(o.capacity_rule, std::max<index_t>(group_size, 1),
                                                   std::max<index_t>(experts, 1), 2, o.capacity_factor));
}

namespace detail {

/// The logits as [<batch>, group, experts] (transposed if needed) plus the
/// validated extras in the matching layout.
template <class T>
struct GatingProblem {
  Tensor<T> logits;  // [<batch>, group, experts]
  Shape batch;
  Dim group, experts, capacity;
  std::optional<Tensor<T>> importance, uniform, gumbel;  // [<batch>, group] / [.., experts]
  index_t G = 0, S = 0, E = 0, C = 0;
};

template <class T>
Tensor<T> conform(const Tensor<T>& x, const Shape& want, const char* op, const char* what) {
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
  return transpose(x, want);
}

template <class T>
GatingProblem<T> make_problem(const Tensor<T>& logits, const Top2Options& o, const GatingInputs<T>& in,
                              const char* op, const char* importance_name = "importance") {
  static_assert(std::is_floating_point<T>::value, "top-2 gating needs float or double logits");
  GatingProblem<T> p;
  const Shape& s = logits.shape();
  s.require(o.group_dim, op);
  s.require(o.experts_dim, op);
  if (o.group_dim == o.experts_dim) raise<value_error>(op, ": group and experts dims are both \"", o.group_dim, "\"");
  p.batch = s.without({o.group_dim, o.experts_dim});
  p.group = s.get(o.group_dim);
  p.experts = s.get(o.experts_dim);
  if (s.has(o.capacity.name)) raise<shape_error>(op, ": capacity dim \"", o.capacity.name, "\" is already in the logits");
  if (p.experts.size < 1) raise<value_error>(op, ": dim \"", p.experts.name, "\" has size 0; need at least one expert");
  p.capacity = resolved_capacity(o, p.group.size, p.experts.size, op);
  if (std::isnan(o.threshold)) raise<value_error>(op, ": threshold is NaN");
  const Shape tok = p.batch.with(p.group);
  const Shape full = tok.with(p.experts);
  p.logits = transpose(logits, full);
  check_router_logits(p.logits, p.experts.size, op);
  if (in.importance) {
    p.importance = conform(*in.importance, tok, op, importance_name);
    for (auto v : *p.importance)
      if (!std::isfinite(v)) raise<value_error>(op, ": ", importance_name, " contains ", v);
  }
  if (in.uniform) p.uniform = conform(*in.uniform, tok, op, "uniform draws");
  if (in.gumbel) p.gumbel = conform(*in.gumbel, full, op, "gumbel draws");
  // Draw what the policy needs and was not given, from the seed (row-major).
  if (o.policy == SecondPolicy::random && !p.uniform) p.uniform = Rng(o.seed).uniform<T>(tok);
  if (o.policy == SecondPolicy::sampling && !p.gumbel) p.gumbel = Rng(o.seed).gumbel<T>(full);
  p.G = p.batch.num_elements();
  p.S = p.group.size;
  p.E = p.experts.size;
  p.C = p.capacity.size;
  return p;
}

}  // namespace detail
}  // namespace einmoe
