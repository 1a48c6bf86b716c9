// einmoe/routers/sparse_dispatcher.hpp - dropless dispatch by gates
// (tensor2tensor's SparseDispatcher), and routing plans from gates.
//
// Given gates [batch, experts] with at most a few nonzeros per row, expert e
// receives exactly the rows b with gates[b, e] > 0, in batch order; nothing
// is dropped (there is no capacity).
//
// Example:
//   SparseDispatcher<float> d(gates, "batch", "experts");
//   auto parts = d.dispatch(x);        // one [batch=n_e, model] tensor per expert
//   std::vector<Tensor<float>> expert_outs = run_experts(parts);   // the same shapes
//   auto y = d.combine(expert_outs);   // [batch, model]: sum_e gates[b, e] * out_e[b]
//   auto g = d.expert_to_gates();      // one [batch=n_e] tensor per expert
//
// plan_from_gates builds the same routing as a RoutingPlan (one group,
// capacity = the largest expert load), so experts_sparse can run it.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "einmoe/ops/manip.hpp"
#include "einmoe/routers/router.hpp"
#include "einmoe/routers/routing_plan.hpp"

namespace einmoe {

template <class T>
class SparseDispatcher {
 public:
  /// gates: [batch, experts] (named; any order; exactly these two dims).
  /// Throws shape_error unless gates has exactly the two named dims.
  SparseDispatcher(const TensorView<const T>& gates, std::string batch_dim = "batch",
                   std::string experts_dim = "experts")
      : batch_dim_(std::move(batch_dim)) {
    const Shape& s = gates.shape();
    if (s.rank() != 2)
      detail::raise<shape_error>("SparseDispatcher: gates ", s, " must be [", batch_dim_, ", ", experts_dim, "]");
    batch_ = s.get(batch_dim_, "SparseDispatcher");
    experts_ = s.get(experts_dim, "SparseDispatcher");
    const Tensor<T> g = transpose(gates, Shape{batch_, experts_});
    const index_t B = batch_.size, E = experts_.size;
    part_sizes_.assign(detail::uz(E), 0);
    // (expert, batch) pairs with gate > 0, ordered by expert then batch.
    for (index_t e = 0; e < E; ++e)
      for (index_t b = 0; b < B; ++b)
        if (g[b * E + e] > T(0)) {
          expert_index_.push_back(e);
          batch_index_.push_back(b);
          nonzero_gates_.push_back(g[b * E + e]);
          ++part_sizes_[detail::uz(e)];
        }
  }

  /// One tensor per expert: the rows of `inp` ([batch, ...]) routed to it,
  /// in batch order, as [batch=n_e, ...].
  /// Throws shape_error unless inp's first dim is the batch dim, of the gates' size.
  std::vector<Tensor<T>> dispatch(const TensorView<const T>& inp) const {
    const index_t axis = inp.shape().require(batch_dim_, "SparseDispatcher::dispatch");
    if (axis != 0)
      detail::raise<shape_error>("SparseDispatcher::dispatch: dim \"", batch_dim_, "\" must come first in ",
                                 inp.shape());
    if (inp.shape()[0].size != batch_.size)
      detail::raise<shape_error>("SparseDispatcher::dispatch: dim \"", batch_dim_, "\" has size ", inp.shape()[0].size,
                                 " in the inputs but ", batch_.size, " in the gates");
    const index_t row = batch_.size ? inp.size() / batch_.size : 0;
    std::vector<Tensor<T>> out;
    std::size_t at = 0;
    for (index_t n : part_sizes_) {
      auto dims = inp.shape().dims();
      dims[0].size = n;
      Tensor<T> part(Shape(dims), uninitialized);
      for (index_t i = 0; i < n; ++i, ++at)
        std::copy_n(inp.data() + batch_index_[at] * row, row, part.data() + i * row);
      out.push_back(std::move(part));
    }
    return out;
  }

  /// [batch, ...]: for each row b, the sum over experts of
  /// gates[b, e] * expert_out[e][row of b] (without the gates if
  /// multiply_by_gates is false). Rows routed nowhere are zero.
  /// Throws shape_error unless there is one output per expert, of its part size.
  Tensor<T> combine(const std::vector<Tensor<T>>& expert_out, bool multiply_by_gates = true) const {
    if (expert_out.size() != part_sizes_.size())
      detail::raise<shape_error>("SparseDispatcher::combine: ", expert_out.size(), " expert outputs for ",
                                 part_sizes_.size(), " experts");
    Shape row_shape;
    for (std::size_t e = 0; e < expert_out.size(); ++e) {
      const Shape& s = expert_out[e].shape();
      if (s.rank() < 1 || s[0].size != part_sizes_[e])
        detail::raise<shape_error>("SparseDispatcher::combine: output of expert ", e, " has shape ", s, "; expected ",
                                   part_sizes_[e], " rows first");
      Shape rest;
      for (index_t i = 1; i < s.rank(); ++i) rest = rest.with(s[i]);
      if (e == 0) row_shape = rest;
      else if (rest != row_shape)
        detail::raise<shape_error>("SparseDispatcher::combine: expert ", e, " gives rows ", rest,
                                   " but expert 0 gives ", row_shape);
    }
    std::vector<Dim> dims{batch_};
    for (const auto& d : row_shape) dims.push_back(d);
    Tensor<T> out{Shape(dims)};
    const index_t row = row_shape.num_elements();
    std::size_t at = 0;
    for (std::size_t e = 0; e < expert_out.size(); ++e)
      for (index_t i = 0; i < part_sizes_[e]; ++i, ++at) {
        const T w = multiply_by_gates ? nonzero_gates_[at] : T(1);
        const T* src = expert_out[e].data() + i * row;
        T* dst = out.data() + batch_index_[at] * row;
        for (index_t j = 0; j < row; ++j) dst[j] += w * src[j];
      }
    return out;
  }

  /// The gate of each dispatched row, per expert: [batch=n_e].
  /// Throws nothing but std::bad_alloc.
  std::vector<Tensor<T>> expert_to_gates() const {
    std::vector<Tensor<T>> out;
    std::size_t at = 0;
    for (index_t n : part_sizes_) {
      Tensor<T> g(Shape{Dim(batch_dim_, n)}, uninitialized);
      for (index_t i = 0; i < n; ++i) g[i] = nonzero_gates_[at++];
      out.push_back(std::move(g));
    }
    return out;
  }

  /// Rows per expert.
  /// Never throws.
  const std::vector<index_t>& part_sizes() const { return part_sizes_; }

 private:
  std::string batch_dim_;
  Dim batch_, experts_;
  std::vector<index_t> expert_index_, batch_index_, part_sizes_;
  std::vector<T> nonzero_gates_;
};

/// Dropless routing as a plan: gates [<batch>, experts] -> one group of all
/// tokens (dims.group of size prod(batch)), capacity (dims.capacity) = the
/// largest expert load, up to k nonzero gates per token (in expert order).
/// Slots follow token order, as SparseDispatcher's rows. Throws shape_error
/// without the experts dim, value_error for a token with more than k
/// nonzero gates.
template <class T>
RoutingPlan<T> plan_from_gates(const TensorView<const T>& gates, index_t k, const MoEDims& dims = {}) {
  const std::string& experts_dim = dims.experts;
  const Dim experts = gates.shape().get(experts_dim, "plan_from_gates");
  const Shape tokens = gates.shape().without({experts_dim});
  Tensor<T> hold;
  const TensorView<const T> g = detail::in_order(gates, tokens.with(experts), hold);
  const index_t S = tokens.num_elements(), E = experts.size;
  std::vector<index_t> load(detail::uz(E), 0);
  for (index_t t = 0; t < S; ++t) {
    index_t nz = 0;
    for (index_t e = 0; e < E; ++e)
      if (g[t * E + e] > T(0)) ++load[detail::uz(e)], ++nz;
    if (nz > k)
      detail::raise<value_error>("plan_from_gates: token ", t, " has ", nz, " nonzero gates, more than k = ", k);
  }
  const index_t C = E ? std::max<index_t>(1, *std::max_element(load.begin(), load.end())) : 1;
  RoutingPlan<T> plan;
  plan.reset(Shape(), Dim(dims.group, S), experts, Dim(dims.capacity, C), k);
  for (index_t t = 0; t < S; ++t) {
    index_t j = 0;
    for (index_t e = 0; e < E; ++e) {
      const T w = g[t * E + e];
      if (!(w > T(0))) continue;
      const auto entry = detail::uz(t * k + j++);
      const index_t slot = plan.taken[detail::uz(e)]++;
      plan.expert[entry] = static_cast<std::int32_t>(e);
      plan.slot[entry] = static_cast<std::int32_t>(slot);
      plan.weight[entry] = w;
      plan.slot_entry[detail::uz(plan.slot_index(0, e, slot))] = static_cast<index_t>(entry);
    }
  }
  return plan;
}

}  // namespace einmoe
