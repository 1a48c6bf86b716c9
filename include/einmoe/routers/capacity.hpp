// einmoe/routers/capacity.hpp - expert capacity and grouping rules of the systems
// einmoe follows.
//
// Example:
//   index_t a = mtf_capacity(1024, 16, 1.25);         // Mesh TF: max(min(S, int(S*cf/E)), 4) -> 80
//   index_t b = lingvo_capacity(1024, 16, 1.25);      // lingvo: int(S*cf/E) rounded up to a multiple of 4 -> 80
//   index_t c = topk_capacity(1024, 16, 2, 1.25);     // DeepSpeed/Tutel: ceil(k*cf*S/E) -> 160
//   index_t d = flaxformer_capacity(1024, 16, 1.25);  // flaxformer: max(round(S*cf/E), 4) -> 80
//   index_t e = expert_choice_capacity(1024, 16, 2.0);  // Zhou et al.: min(S, max(round(S*cf/E), 1)) -> 128
//   auto g = split_into_groups(4096, 1024);           // Mesh TF: {num_groups 4, group_size 1024}
//
// CapacitySpec says which of these a router uses (or a fixed C, or none).
#pragma once

#include <algorithm>
#include <cmath>

#include "einmoe/core/checked.hpp"
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
/// Throws value_error for a negative group size, no experts or a factor that is not a positive number.
inline index_t mtf_capacity(index_t group_size, index_t experts, double capacity_factor, index_t min_capacity = 4) {
  detail::check_capacity_args("mtf_capacity", group_size, experts, capacity_factor);
  const auto c = static_cast<index_t>(static_cast<double>(group_size) * capacity_factor / static_cast<double>(experts));
  return std::max(std::min(group_size, c), min_capacity);
}

/// lingvo (Top2GatingOnLogits with capacity_factor): int(S * cf / E) rounded
/// up to a multiple of 4 when that exceeds `given` (the configured
/// expert_capacity_dim); otherwise `given`.
/// Throws value_error for a negative group size, no experts or a factor that is not a positive number.
inline index_t lingvo_capacity(index_t group_size, index_t experts, double capacity_factor, index_t given = 0) {
  detail::check_capacity_args("lingvo_capacity", group_size, experts, capacity_factor);
  index_t c = static_cast<index_t>(static_cast<double>(group_size) * capacity_factor / static_cast<double>(experts));
  if (c <= given) return given;
  if (c % 4) c += 4 - c % 4;
  return c;
}

/// DeepSpeed / Tutel: max(ceil(k * cf * S / E), min_capacity).
/// Throws value_error for k < 1, a negative group size, no experts or a factor
/// that is not a positive number.
inline index_t topk_capacity(index_t group_size, index_t experts, index_t k, double capacity_factor,
                             index_t min_capacity = 0) {
  detail::check_capacity_args("topk_capacity", group_size, experts, capacity_factor);
  if (k < 1) detail::raise<value_error>("topk_capacity: k = ", k, " must be at least 1");
  const double c = std::ceil(
      static_cast<double>(k) * capacity_factor * static_cast<double>(group_size) / static_cast<double>(experts) - 1e-9);
  return std::max(static_cast<index_t>(c), min_capacity);
}

/// flaxformer (MoeLayer): max(round(cf * S / E), min_capacity), rounding
/// half to even like Python's round.
/// Throws value_error for a negative group size, no experts or a factor that is not a positive number.
inline index_t flaxformer_capacity(index_t group_size, index_t experts, double capacity_factor,
                                   index_t min_capacity = 4) {
  detail::check_capacity_args("flaxformer_capacity", group_size, experts, capacity_factor);
  const double x = capacity_factor * static_cast<double>(group_size) / static_cast<double>(experts);
  double r = std::floor(x);
  const double frac = x - r;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0.0)) r += 1.0;
  return std::max(static_cast<index_t>(r), min_capacity);
}

/// Expert choice (Zhou et al. 2022; flaxformer ExpertsChooseMaskedRouter):
/// C = min(S, max(round(S * cf / E), 1)) tokens per expert, each token
/// getting cf experts on average.
/// Throws value_error for a negative group size, no experts or a factor that is not a positive number.
inline index_t expert_choice_capacity(index_t group_size, index_t experts, double capacity_factor) {
  detail::check_capacity_args("expert_choice_capacity", group_size, experts, capacity_factor);
  const double c = std::round(static_cast<double>(group_size) * capacity_factor / static_cast<double>(experts));
  return std::min<index_t>(group_size, std::max<index_t>(1, c >= 9.0e18 ? group_size : static_cast<index_t>(c)));
}

/// The systems whose capacity rule a CapacitySpec with a factor follows.
enum class CapacityRule {
  mtf,            ///< mtf_capacity (min capacity 4)
  lingvo,         ///< lingvo_capacity (nothing configured)
  deepspeed,      ///< topk_capacity: ceil(k * cf * S / E), at least min_capacity (Tutel too)
  flaxformer,     ///< flaxformer_capacity (min capacity 4)
  expert_choice,  ///< expert_choice_capacity
};

inline const char* to_string(CapacityRule r) {
  switch (r) {
    case CapacityRule::mtf: return "mtf";
    case CapacityRule::lingvo: return "lingvo";
    case CapacityRule::deepspeed: return "deepspeed";
    case CapacityRule::flaxformer: return "flaxformer";
    default: return "expert-choice";
  }
}

/// Capacity from a factor, by the rule of the system being followed, for
/// the actual group size S, E experts and k choices per token (k is used by
/// the deepspeed rule only; the others size for their own top-2 or top-k
/// conventions through cf). min_capacity applies to deepspeed (default 0).
/// value_error for a negative group size, no experts or a factor that is not
/// a positive number.
inline index_t capacity_from_factor(CapacityRule rule, index_t group_size, index_t experts, index_t k,
                                    double capacity_factor, index_t min_capacity = 0) {
  switch (rule) {
    case CapacityRule::mtf: return mtf_capacity(group_size, experts, capacity_factor);
    case CapacityRule::lingvo: return lingvo_capacity(group_size, experts, capacity_factor);
    case CapacityRule::deepspeed: return topk_capacity(group_size, experts, k, capacity_factor, min_capacity);
    case CapacityRule::flaxformer: return flaxformer_capacity(group_size, experts, capacity_factor);
    default: return expert_choice_capacity(group_size, experts, capacity_factor);
  }
}

/// How many slots C each expert has in each group of S tokens, for every
/// router: a fixed C, a factor sized by a system's rule for the actual group
/// size on every call, or dropless (no limit).
///
/// Example:
///   Top2Options o;
///   o.capacity = CapacitySpec::fixed(160);                         // C = 160
///   o.capacity = CapacitySpec::factor(1.25);                       // Mesh TF's rule (the top-2 default)
///   o.capacity = CapacitySpec::factor(1.0, CapacityRule::deepspeed);
///   TopKOptions t;                                                  // dropless by default
///   index_t c = CapacitySpec::factor(1.25).slots(1024, 16, 2);     // 80
struct CapacitySpec {
  enum class Kind { fixed, factor, dropless };
  Kind kind = Kind::factor;
  index_t size = 0;                       ///< C, when fixed
  double capacity_factor = 1.25;          ///< when factor
  CapacityRule rule = CapacityRule::mtf;  ///< when factor

  /// Exactly `c` slots per expert per group (checked when used: c >= 1).
  /// Never throws.
  static CapacitySpec fixed(index_t c) {
    CapacitySpec s;
    s.kind = Kind::fixed;
    s.size = c;
    return s;
  }
  /// capacity_factor sized by `rule` for each call's group size.
  /// Never throws.
  static CapacitySpec factor(double capacity_factor, CapacityRule rule = CapacityRule::mtf) {
    CapacitySpec s;
    s.kind = Kind::factor;
    s.capacity_factor = capacity_factor;
    s.rule = rule;
    return s;
  }
  /// No limit: every choice is kept. C = S when a token's k choices are
  /// distinct experts (k <= E), k / E times more otherwise (top-2 on one
  /// expert), so no expert can run out.
  /// Never throws.
  static CapacitySpec dropless() {
    CapacitySpec s;
    s.kind = Kind::dropless;
    return s;
  }

  bool is_dropless() const { return kind == Kind::dropless; }

  /// C for groups of S tokens, E experts and k choices per token (S and E of
  /// 0 count as 1). value_error naming `op` for a fixed size below 1 or a
  /// factor that is not a positive number.
  index_t slots(index_t S, index_t E, index_t k, const char* op = "capacity") const {
    switch (kind) {
      case Kind::fixed:
        if (size < 1) detail::raise<value_error>(op, ": capacity ", size, " must be at least 1");
        return size;
      case Kind::dropless: {
        const index_t per_token =
            std::max<index_t>(1, (std::max<index_t>(k, 1) + std::max<index_t>(E, 1) - 1) / std::max<index_t>(E, 1));
        return detail::mul_size(std::max<index_t>(S, 1), per_token, op, ": dropless capacity");
      }
      default:
        if (!(capacity_factor > 0 && std::isfinite(capacity_factor)))
          detail::raise<value_error>(op, ": capacity_factor ", capacity_factor, " is not a positive number");
        return capacity_from_factor(rule, std::max<index_t>(S, 1), std::max<index_t>(E, 1), std::max<index_t>(k, 1),
                                    capacity_factor);
    }
  }

  friend bool operator==(const CapacitySpec& a, const CapacitySpec& b) {
    if (a.kind != b.kind) return false;
    if (a.kind == Kind::fixed) return a.size == b.size;
    if (a.kind == Kind::factor) return a.capacity_factor == b.capacity_factor && a.rule == b.rule;
    return true;
  }
  friend bool operator!=(const CapacitySpec& a, const CapacitySpec& b) { return !(a == b); }
};

/// moe_v0 (Mesh TF): min(length, int(length * 2 * overhead / E)).
/// Throws value_error for a negative length, no experts or a non-positive overhead.
inline index_t moe_v0_capacity(index_t length, index_t experts, double overhead = 1.0) {
  detail::check_capacity_args("moe_v0_capacity", length, experts, overhead);
  return std::min(length,
                  static_cast<index_t>(static_cast<double>(length) * 2.0 * overhead / static_cast<double>(experts)));
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
  if (max_group_size < 1)
    detail::raise<value_error>("split_into_groups: max_group_size = ", max_group_size, " must be positive");
  if (mesh_dim_size < 1 || n % mesh_dim_size != 0)
    detail::raise<value_error>("split_into_groups: n = ", n, " is not a multiple of mesh_dim_size = ", mesh_dim_size);
  index_t g = std::max<index_t>(1, n / max_group_size);
  while (g % mesh_dim_size != 0 || n % g != 0) ++g;
  return {g, n / g};
}

}  // namespace einmoe
