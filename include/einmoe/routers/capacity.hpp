// einmoe/routers/capacity.hpp - expert capacity and grouping rules of the systems
// einmoe follows.
//
// Example:
//   index_t a = mtf_capacity(1024, 16, 1.25);         // Mesh TF: max(min(S, int(S*cf/E)), 4) -> 80
//   index_t b = lingvo_capacity(1024, 16, 1.25);      // lingvo: int(S*cf/E) rounded up to a multiple of 4 -> 80
//   index_t c = topk_capacity(1024, 16, 2, 1.25);     // DeepSpeed/Tutel: ceil(k*cf*S/E) -> 160
//   index_t d = flaxformer_capacity(1024, 16, 1.25);  // flaxformer: max(round(S*cf/E), 4) -> 80
//   auto g = split_into_groups(4096, 1024);           // Mesh TF: {num_groups 4, group_size 1024}
#pragma once

#include <cmath>

#include "einmoe/core/dim.hpp"
#include "einmoe/core/error.hpp"

namespace einmoe {
namespace detail {
inline void check_capacity_args(const char* op, index_t group_size, index_t experts, double factor) {
  if (group_size < 0) raise<value_error>(op, ": group size ", group_size, " is negative");
  if (experts < 1) raise<value_error>(op, ": ", experts, " experts; need at least 1");
  if (!(factor > 0) || !std::isfinite(factor))
    raise<value_error>(op, ": capacity factor ", factor, " is not a positive number");
}
}  // namespace detail

/// Mesh TF (_top_2_gating's callers): max(min(S, int(S * cf / E)), min_capacity).
inline index_t mtf_capacity(index_t group_size, index_t experts, double capacity_factor, index_t min_capacity = 4) {
  detail::check_capacity_args("mtf_capacity", group_size, experts, capacity_factor);
  const auto c = static_cast<index_t>(static_cast<double>(group_size) * capacity_factor / static_cast<double>(experts));
  return std::max(std::min(group_size, c), min_capacity);
}

/// lingvo (Top2GatingOnLogits with capacity_factor): int(S * cf / E) rounded
/// up to a multiple of 4 when that exceeds `given` (the configured
/// expert_capacity_dim); otherwise `given`.
inline index_t lingvo_capacity(index_t group_size, index_t experts, double capacity_factor, index_t given = 0) {
  detail::check_capacity_args("lingvo_capacity", group_size, experts, capacity_factor);
  index_t c = static_cast<index_t>(static_cast<double>(group_size) * capacity_factor / static_cast<double>(experts));
  if (c <= given) return given;
  if (c % 4) c += 4 - c % 4;
  return c;
}

/// DeepSpeed / Tutel: max(ceil(k * cf * S / E), min_capacity).
inline index_t topk_capacity(index_t group_size, index_t experts, index_t k, double capacity_factor,
                             index_t min_capacity = 0) {
  detail::check_capacity_args("topk_capacity", group_size, experts, capacity_factor);
  if (k < 1) detail::raise<value_error>("topk_capacity: k = ", k, " must be at least 1");
  const double c = std::ceil(static_cast<double>(k) * capacity_factor * static_cast<double>(group_size) /
                             static_cast<double>(experts) - 1e-9);
  return std::max(static_cast<index_t>(c), min_capacity);
}

/// flaxformer (MoeLayer): max(round(cf * S / E), min_capacity), rounding
/// half to even like Python's round.
inline index_t flaxformer_capacity(index_t group_size, index_t experts, double capacity_factor, index_t min_capacity = 4) {
  detail::check_capacity_args("flaxformer_capacity", group_size, experts, capacity_factor);
  const double x = capacity_factor * static_cast<double>(group_size) / static_cast<double>(experts);
  double r = std::floor(x);
  const double frac = x - r;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0.0)) r += 1.0;
  return std::max(static_cast<index_t>(r), min_capacity);
}

/// The systems whose capacity rule capacity_from_factor follows.
enum class CapacityRule {
  mtf,         ///< mtf_capacity (min capacity 4)
  lingvo,      ///< lingvo_capacity (nothing configured)
  deepspeed,   ///< topk_capacity: ceil(k * cf * S / E), at least min_capacity (Tutel too)
  flaxformer,  ///< flaxformer_capacity (min capacity 4)
};

/// Capacity from a factor, by the rule of the system being followed, for
/// the actual group size S, E experts and k choices per token (k is used by
/// the deepspeed rule only; the others size for their own top-2 or top-k
/// conventions through cf). min_capacity applies to deepspeed (default 0).
inline index_t capacity_from_factor(CapacityRule rule, index_t group_size, index_t experts, index_t k,
                                    double capacity_factor, index_t min_capacity = 0) {
  switch (rule) {
    case CapacityRule::mtf: return mtf_capacity(group_size, experts, capacity_factor);
    case CapacityRule::lingvo: return lingvo_capacity(group_size, experts, capacity_factor);
    case CapacityRule::deepspeed: return topk_capacity(group_size, experts, k, capacity_factor, min_capacity);
    default: return flaxformer_capacity(group_size, experts, capacity_factor);
  }
}

/// moe_v0 (Mesh TF): min(length, int(length * 2 * overhead / E)).
inline index_t moe_v0_capacity(index_t length, index_t experts, double overhead = 1.0) {
  detail::check_capacity_args("moe_v0_capacity", length, experts, overhead);
  return std::min(length, static_cast<index_t>(static_cast<double>(length) * 2.0 * overhead / static_cast<double>(experts)));
}

/// How Mesh TF splits n tokens into num_groups * group_size: starting from
/// max(1, n / max_group_size) groups (integer division), the first count that
/// divides n and is a multiple of mesh_dim_size. As in the source (whose
/// docstring says otherwise), group_size can exceed max_group_size:
/// split_into_groups(30, 8) is 3 groups of 10.
struct GroupSplit {
  index_t num_groups = 1;
  index_t group_size = 0;
};
inline GroupSplit split_into_groups(index_t n, index_t max_group_size, index_t mesh_dim_size = 1) {
  if (n < 1) detail::raise<value_error>("split_into_groups: n = ", n, " must be positive");
  if (max_group_size < 1) detail::raise<value_error>("split_into_groups: max_group_size = ", max_group_size, " must be positive");
  if (mesh_dim_size < 1 || n % mesh_dim_size != 0)
    detail::raise<value_error>("split_into_groups: n = ", n, " is not a multiple of mesh_dim_size = ", mesh_dim_size);
  index_t g = std::max<index_t>(1, n / max_group_size);
  while (g % mesh_dim_size != 0 || n % g != 0) ++g;
  return {g, n / g};
}

}  // namespace einmoe
