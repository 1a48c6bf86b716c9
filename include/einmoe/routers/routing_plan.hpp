// einmoe/routers/routing_plan.hpp - the sparse result of MoE routing.
//
// Gating decides, per token, up to k (expert, slot, weight) choices. The
// sources encode this as dense [<batch>, group, experts, expert_capacity]
// dispatch/combine tensors that are almost all zeros; a RoutingPlan keeps only
// the choices:
//
//   per token t = g * S + s and choice j < k:  expert, slot, weight
//   per (g, e): taken (slots 0..taken-1 are used) and, per slot, its entry
//
// Its size is O(G*S*k + G*E*C): it never holds an S x E x C tensor. The dense
// tensors can always be rebuilt from it (combine_tensor, dispatch_tensor).
// G is the product of the batch dims (flattened, row-major).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "einmoe/core/tensor.hpp"

namespace einmoe {

/// Load statistics of one routing, over all groups.
struct RoutingStats {
  std::vector<index_t> tokens_per_expert;      ///< kept choices per expert (all groups)
  std::vector<index_t> first_choices;          ///< tokens whose first choice is e (before capacity)
  std::vector<double> density_1;               ///< first_choices / tokens
  index_t first_wanted = 0, first_kept = 0;    ///< first choices before / after capacity
  index_t second_wanted = 0, second_kept = 0;  ///< second choices (after the policy) before / after capacity
  index_t slots = 0;                           ///< G * E * C

  double dropped_first() const { return first_wanted ? 1.0 - double(first_kept) / double(first_wanted) : 0.0; }
  double dropped_second() const { return second_wanted ? 1.0 - double(second_kept) / double(second_wanted) : 0.0; }
  /// Filled slots / all slots.
  /// Never throws.
  double fill() const { return slots ? double(first_kept + second_kept) / double(slots) : 0.0; }
};

/// A router's losses in per-group pieces (group order), from which the
/// scalar losses are finished: routers over groups routed on different
/// processes gather the pieces and finish them in the same order as one
/// process does, so the losses are bitwise the same (see parallel/).
template <class T>
struct LossParts {
  std::vector<T> aux;   ///< [G] the group's balancing-loss sum
  std::vector<T> aux2;  ///< [G] top-2's second-place loss sum (empty when unused)
  std::vector<T> z;     ///< [G] the group's sum over tokens of logsumexp(logits)^2
};

template <class T>
struct RoutingPlan {
  Shape batch;    ///< the dims before the group dim, flattened into G groups
  Dim group;      ///< S tokens per group
  Dim experts;    ///< E
  Dim capacity;   ///< C slots per expert per group
  index_t k = 2;  ///< choices per token

  std::vector<std::int32_t> expert;  ///< [G*S*k] chosen expert, -1 = none
  std::vector<std::int32_t> slot;    ///< [G*S*k] slot in that expert, -1 = none
  std::vector<T> weight;             ///< [G*S*k] combine weight (0 where none)
  std::vector<std::int32_t> taken;   ///< [G*E] slots taken (0..taken-1)
  std::vector<index_t> slot_entry;   ///< [G*E*stride] entry (t*k + j) in each slot, -1 if empty
  /// Slots held per (group, expert): min(C, S k). A group's S k choices can
  /// fill no more, so slots past them are not allocated (a capacity far above
  /// the group size costs nothing). (Usually an expert takes a token once,
  /// but top-2 with one expert repeats it as the second choice.)
  index_t stride = 0;

  index_t groups() const { return batch.num_elements(); }
  index_t tokens() const { return groups() * group.size; }
  /// Index in slot_entry of slot c of expert e in group g (c < stride).
  /// Never throws.
  index_t slot_index(index_t g, index_t e, index_t c) const { return (g * experts.size + e) * stride + c; }

  /// Sets up an empty plan for the given dims (reusing the buffers' memory).
  /// Throws shape_error if the slot table's size overflows.
  void reset(Shape batch_shape, Dim group_dim, Dim experts_dim, Dim capacity_dim, index_t choices) {
    batch = std::move(batch_shape);
    group = std::move(group_dim);
    experts = std::move(experts_dim);
    capacity = std::move(capacity_dim);
    k = choices;
    if (group.size > INT32_MAX)
      detail::raise<shape_error>("RoutingPlan: group dim \"", group.name, "\" has ", group.size,
                                 " tokens (at most 2^31 - 1)");
    stride = k > 0 && group.size > capacity.size / k ? capacity.size : std::min(capacity.size, group.size * k);
    const index_t G = groups();
    const index_t entries = detail::mul_size(detail::mul_size(G, group.size, "routing plan: ", batch, ", ", group), k,
                                             "routing plan: ", batch, ", ", group, " x ", k, " choices");
    const index_t ge = detail::mul_size(G, experts.size, "routing plan: ", batch, ", ", experts);
    const index_t slots = detail::mul_size(ge, stride, "routing plan: ", batch, ", ", experts, ", ", capacity);
    detail::check_memory(static_cast<long double>(entries) * (2 * sizeof(std::int32_t) + sizeof(T)) +
                             static_cast<long double>(ge) * sizeof(std::int32_t) +
                             static_cast<long double>(slots) * sizeof(index_t),
                         "routing plan for ", batch.with(group).with(experts).with(capacity));
    expert.assign(detail::uz(entries), -1);
    slot.assign(detail::uz(entries), -1);
    weight.assign(detail::uz(entries), T(0));
    taken.assign(detail::uz(ge), 0);
    slot_entry.assign(detail::uz(slots), -1);
  }

  /// [<batch>, group, experts, capacity]
  /// Throws nothing but std::bad_alloc.
  Shape dense_shape() const { return batch.with(group).with(experts).with(capacity); }

  /// The dense combine tensor of the sources, [<batch>, group, experts,
  /// capacity]: weight at [.., s, e, c].
  /// Throws resource_error if the tensor would not fit in memory.
  Tensor<T> combine_tensor() const {
    Tensor<T> out(dense_shape());
    const index_t E = experts.size, C = capacity.size;
    for (index_t t = 0; t < tokens(); ++t)
      for (index_t j = 0; j < k; ++j) {
        const auto i = static_cast<std::size_t>(t * k + j);
        if (expert[i] >= 0) out[(t * E + expert[i]) * C + slot[i]] += weight[i];
      }
    return out;
  }
  /// The dense dispatch tensor [<batch>, group, experts, capacity]: 1 where
  /// combine is nonzero (as the sources derive it), else 0.
  /// Throws resource_error if the tensor would not fit in memory.
  Tensor<T> dispatch_tensor() const {
    Tensor<T> c = combine_tensor();
    for (auto& v : c) v = v != T(0) ? T(1) : T(0);
    return c;
  }

  /// The plan of groups [first, first + count) alone, as a plan whose batch
  /// is `batch_shape` (count groups).
  /// Throws shape_error unless [first, first + count) lies within the plan's groups.
  RoutingPlan slice_groups(index_t first, index_t count, Shape batch_shape) const {
    if (first < 0 || count < 0 || first + count > groups() || batch_shape.num_elements() != count)
      detail::raise<shape_error>("RoutingPlan::slice_groups: groups [", first, ", ", first + count, ") of ", groups(),
                                 " as ", batch_shape);
    RoutingPlan p;
    p.reset(std::move(batch_shape), group, experts, capacity, k);
    const index_t S = group.size, E = experts.size, C = stride;
    const index_t e0 = first * S * k, e1 = (first + count) * S * k;
    std::copy(expert.begin() + e0, expert.begin() + e1, p.expert.begin());
    std::copy(slot.begin() + e0, slot.begin() + e1, p.slot.begin());
    std::copy(weight.begin() + e0, weight.begin() + e1, p.weight.begin());
    std::copy(taken.begin() + first * E, taken.begin() + (first + count) * E, p.taken.begin());
    for (index_t i = 0; i < count * E * C; ++i) {
      const index_t v = slot_entry[detail::uz(first * E * C + i)];
      p.slot_entry[detail::uz(i)] = v < 0 ? -1 : v - e0;
    }
    return p;
  }

  /// Bytes held by the plan (for memory bounds and reports).
  /// Never throws.
  std::size_t bytes() const {
    return expert.size() * sizeof(std::int32_t) + slot.size() * sizeof(std::int32_t) + weight.size() * sizeof(T) +
           taken.size() * sizeof(std::int32_t) + slot_entry.size() * sizeof(index_t);
  }
};

}  // namespace einmoe
