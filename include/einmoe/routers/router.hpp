// einmoe/routers/router.hpp - what every router shares: the dim names, the
// results, top-2's per-token inputs, the per-call context, the workspace, the
// problem setup and the loss helpers.
//
// A router turns logits [<batch>, group, experts] into a RouterResult: a
// RoutingPlan (per token up to k (expert, slot, weight) choices), the
// balancing loss aux_loss, the router z-loss and load statistics. Its dense
// oracle gives a DenseRouterResult: the sources' one-hot combine and
// dispatch tensors [<batch>, group, experts, expert_capacity], with the same
// losses and statistics. routers/route.hpp dispatches over the routers.
//
// Example:
//   MoEDims dims;                         // "group", "experts", "expert_capacity", "model", "hidden"
//   dims.group = "length";                // route over the length dim instead
//   RouterResult<float> r = topk_routing(logits, TopKOptions{}, dims);   // logits [batch, length, experts]
//   const RoutingPlan<float>& plan = r.plan;
//   float aux = r.aux_loss, z = r.z_loss;
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "einmoe/core/random.hpp"
#include "einmoe/core/tensor.hpp"
#include "einmoe/core/threads.hpp"
#include "einmoe/ops/manip.hpp"
#include "einmoe/routers/capacity.hpp"
#include "einmoe/routers/routing_plan.hpp"

namespace einmoe {

/// The names of an MoE layer's dims, in one place: every router, the
/// experts and the layers read them from here.
struct MoEDims {
  std::string group = "group";  ///< a group of tokens that compete for capacity
  std::string experts = "experts";
  std::string capacity = "expert_capacity";  ///< an expert's slots in a group (dense tensors, plans)
  std::string model = "model";
  std::string hidden = "hidden";  ///< the experts' hidden layer
};

/// What a router returns: the plan, the two losses, load statistics.
template <class T>
struct RouterResult {
  RoutingPlan<T> plan;
  T aux_loss = T(0);  ///< the balancing loss (0 where a router has none)
  T z_loss = T(0);    ///< mean over tokens of logsumexp(logits)^2 (0 for top-2, which has none)
  RoutingStats stats;
  LossParts<T> parts;  ///< the losses in per-group pieces (route.hpp's finish_losses finishes them)
  /// [tokens * k] each choice's expert before capacity and the second
  /// policy drop it (top-2: the first and second expert; top-k: the k in
  /// rank order; empty for expert choice, whose plan holds every choice):
  /// what the backward pass differentiates the renormalizations through.
  std::vector<std::int32_t> choice;
};

/// What a router's dense oracle returns: the sources' one-hot tensors.
template <class T>
struct DenseRouterResult {
  Tensor<T> combine;   ///< [<batch>, group, experts, expert_capacity]
  Tensor<T> dispatch;  ///< 1 where combine routes a token, else 0
  T aux_loss = T(0);
  T z_loss = T(0);
  RoutingStats stats;  ///< the same statistics as the fast router's
};

/// Optional per-token inputs of top-2 gating (other routers take none).
template <class T>
struct GatingInputs {
  /// [<batch>, group]: 1 -> up to two experts, in (0, 1) -> at most one, 0 ->
  /// none (Mesh TF's convention; lingvo's paddings are 1 - padding).
  std::optional<TensorView<const T>> importance;
  /// [<batch>, group] uniforms in [0, 1) for policy random.
  std::optional<TensorView<const T>> uniform;
  /// [<batch>, group, experts] standard Gumbel draws for policy sampling.
  std::optional<TensorView<const T>> gumbel;

  bool empty() const { return !importance && !uniform && !gumbel; }
};

/// Where a routing sits in a run, for routers that draw random numbers:
/// the layer's call number (call n draws from Rng::call_seed(seed, n)) and
/// the global index of the first group routed (the groups of earlier ranks,
/// under expert parallelism), so that draws continue one stream.
struct RouteCall {
  std::uint64_t call = 0;
  index_t first_group = 0;
};

/// Scratch memory of the routers, reused across calls (buffers only grow),
/// so that a steady-state routing allocates nothing. Not for concurrent
/// use: one workspace per calling thread.
template <class T>
class RouterWorkspace {
 public:
  /// One thread's buffers: numbered slots of values (T), indices and flags.
  class Thread {
   public:
    T* values(int slot, index_t n) { return grow(values_[static_cast<std::size_t>(slot)], n); }
    index_t* indices(int slot, index_t n) { return grow(indices_[static_cast<std::size_t>(slot)], n); }
    char* flags(int slot, index_t n) { return grow(flags_[static_cast<std::size_t>(slot)], n); }

   private:
    template <class U>
    static U* grow(std::vector<U>& v, index_t n) {
      if (static_cast<index_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
      return v.data();
    }
    std::vector<T> values_[6];
    std::vector<index_t> indices_[6];
    std::vector<char> flags_[4];
    friend class RouterWorkspace;
  };

  /// The calling thread's buffers (inside a parallel loop started after
  /// prepare()).
  /// Never throws.
  Thread& thread() { return threads_[static_cast<std::size_t>(detail::thread_index())]; }
  /// Makes one Thread per thread of the coming parallel loops and grows each
  /// of their buffers to the largest size that buffer has in any Thread:
  /// groups are handed to threads dynamically, so a thread may meet a size
  /// in this call that only another met before; with every thread holding
  /// what any thread grew to, a steady state allocates nothing.
  /// Throws nothing but std::bad_alloc.
  void prepare() {
    if (static_cast<int>(threads_.size()) < num_threads()) threads_.resize(static_cast<std::size_t>(num_threads()));
    for (std::size_t i = 0; i < 6; ++i) {
      detail::equalize_buffers(
          threads_, [i](Thread & t) -> auto& { return t.values_[i]; });
      detail::equalize_buffers(
          threads_, [i](Thread & t) -> auto& { return t.indices_[i]; });
    }
    for (std::size_t i = 0; i < 4; ++i)
      detail::equalize_buffers(
          threads_, [i](Thread & t) -> auto& { return t.flags_[i]; });
  }
  /// Buffers shared by all threads (each thread writes its groups' part).
  /// Never throws.
  std::vector<T>& group_values(int slot) { return group_values_[static_cast<std::size_t>(slot)]; }
  std::vector<index_t>& group_counts(int slot) { return group_counts_[static_cast<std::size_t>(slot)]; }
  /// The logits in [<batch>, group, experts] order when given in another.
  /// Never throws.
  Tensor<T>& logits_hold() { return hold_; }

 private:
  std::vector<Thread> threads_;
  std::vector<T> group_values_[5];
  std::vector<index_t> group_counts_[5];
  Tensor<T> hold_;
};

namespace detail {

/// Router logits [tokens, E] (contiguous): -inf is a valid logit (an expert
/// that cannot be chosen; its gate is 0); NaN and +inf are not, nor a token
/// whose every logit is -inf. value_error naming token and expert.
template <class T>
void check_router_logits(const TensorView<const T>& logits, index_t E, const char* op) {
  for (index_t t = 0; E > 0 && t < logits.size() / E; ++t) {
    bool any = false;
    for (index_t e = 0; e < E; ++e) {
      const T v = logits[t * E + e];
      if (std::isnan(v) || v == std::numeric_limits<T>::infinity())
        raise<value_error>(op, ": logits contain ", v, " (token ", t, ", expert ", e, ")");
      any = any || std::isfinite(v);
    }
    if (!any) raise<value_error>(op, ": every logit of token ", t, " is -inf");
  }
}

/// The logits as [<batch>, group, experts] (a view: no copy when already in
/// that order) with the resolved sizes; C from `capacity` for k choices per
/// token.
template <class T>
struct RouterProblem {
  TensorView<const T> logits;
  Shape batch;
  Dim group, experts, capacity;
  index_t G = 0, S = 0, E = 0, C = 0;
};

/// Checks and lays out a router's logits. shape_error for missing dims or a
/// capacity dim already in the logits; value_error for no experts, a bad
/// capacity or bad logits (check_router_logits). `hold` keeps a transposed
/// copy when one is needed.
template <class T>
RouterProblem<T> router_problem(const TensorView<const T>& logits, const MoEDims& dims, const CapacitySpec& capacity,
                                index_t k, const char* op, Tensor<T>& hold) {
  static_assert(std::is_floating_point<T>::value, "routers need float or double logits");
  RouterProblem<T> p;
  const Shape& s = logits.shape();
  s.require(dims.group, op);
  s.require(dims.experts, op);
  if (dims.group == dims.experts) raise<value_error>(op, ": group and experts dims are both \"", dims.group, "\"");
  if (s.has(dims.capacity)) raise<shape_error>(op, ": capacity dim \"", dims.capacity, "\" is already in the logits");
  p.group = s.get(dims.group);
  p.experts = s.get(dims.experts);
  p.batch = s.without_dim(dims.group).without_dim(dims.experts);
  if (p.experts.size < 1) raise<value_error>(op, ": dim \"", p.experts.name, "\" has size 0; need at least one expert");
  p.G = p.batch.num_elements();
  p.S = p.group.size;
  p.E = p.experts.size;
  p.C = capacity.slots(p.S, p.E, k, op);
  p.capacity = Dim(dims.capacity, p.C);
  p.logits = in_order(logits, p.batch.with(p.group).with(p.experts), hold);
  check_router_logits(p.logits, p.E, op);
  return p;
}

/// logsumexp of one row.
template <class T>
T logsumexp_row(const T* x, index_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (index_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  T s = T(0);
  for (index_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

/// z_loss: mean over all tokens of logsumexp(logits)^2, one flat sum (the
/// dense oracles').
template <class T>
T z_loss_of(const TensorView<const T>& logits, index_t tokens, index_t E) {
  if (tokens == 0) return T(0);
  T z = T(0);
  for (index_t t = 0; t < tokens; ++t) {
    const T l = logsumexp_row(logits.data() + t * E, E);
    z += l * l;
  }
  return z / static_cast<T>(tokens);
}
/// Per group g of G (S tokens each): the sum over its tokens of
/// logsumexp(logits)^2, into parts.z.
template <class T>
void z_parts_of(const TensorView<const T>& logits, index_t G, index_t S, index_t E, LossParts<T>& parts) {
  parts.z.assign(uz(G), T(0));
  for (index_t g = 0; g < G; ++g) {
    T z = T(0);
    for (index_t t = g * S; t < (g + 1) * S; ++t) {
      const T l = logsumexp_row(logits.data() + t * E, E);
      z += l * l;
    }
    parts.z[uz(g)] = z;
  }
}
/// z_loss: mean over all `tokens` of logsumexp(logits)^2, from the parts.
template <class T>
T z_loss_from_parts(const LossParts<T>& parts, index_t tokens) {
  if (tokens == 0) return T(0);
  T z = T(0);
  for (T v : parts.z) z += v;
  return z / static_cast<T>(tokens);
}

/// density_1 from first_choices over `tokens` tokens (one division per
/// expert, so the sum of counts may come from anywhere).
inline void finish_density(RoutingStats& st, index_t tokens) {
  st.density_1.resize(st.first_choices.size());
  for (std::size_t e = 0; e < st.first_choices.size(); ++e)
    st.density_1[e] = tokens > 0 ? static_cast<double>(st.first_choices[e]) / static_cast<double>(tokens) : 0.0;
}

/// Per-group choice counts of a routing: wanted / kept first and second
/// choices (four [G] vectors in the workspace).
struct GroupCounts {
  index_t *wanted1, *wanted2, *kept1, *kept2;
};
template <class T>
GroupCounts group_counts(RouterWorkspace<T>& ws, index_t G) {
  for (int i = 0; i < 4; ++i) ws.group_counts(i).assign(uz(G), 0);
  return {ws.group_counts(0).data(), ws.group_counts(1).data(), ws.group_counts(2).data(), ws.group_counts(3).data()};
}

/// Sums per-group choice counts into `st` (reset first) and takes tokens per
/// expert from the plan's taken slots.
template <class T>
void sum_stats(RoutingStats& st, const RoutingPlan<T>& plan, const GroupCounts& c) {
  const index_t G = plan.groups(), E = plan.experts.size;
  st.tokens_per_expert.assign(uz(E), 0);
  st.first_wanted = st.second_wanted = st.first_kept = st.second_kept = 0;
  for (index_t g = 0; g < G; ++g) {
    for (index_t e = 0; e < E; ++e) st.tokens_per_expert[uz(e)] += plan.taken[uz(g * E + e)];
    st.first_wanted += c.wanted1[g];
    st.second_wanted += c.wanted2[g];
    st.first_kept += c.kept1[g];
    st.second_kept += c.kept2[g];
  }
  st.slots = mul_size(mul_size(G, E, "slots"), plan.capacity.size, "slots: ", plan.batch, ", ", plan.experts, ", ",
                      plan.capacity);
}

/// The top-2 gatings' workspace draws: the uniform of token t (policy
/// random) or the Gumbel draw of (t, e) (policy sampling), from the given
/// tensors or, without them, from `seed` exactly as
/// Rng(seed).uniform<T>([<batch>, group]) / .gumbel<T>(logits.shape()) draw
/// them (token t of the whole run: `first_group` groups before this one).
template <class T>
struct Draws {
  const T* given = nullptr;
  std::uint64_t seed = 0;
  index_t offset = 0;  // draws before this routing's first token (row-major)
  T uniform(index_t t) const {
    if (given) return given[t];
    Rng r(seed);
    r.skip(static_cast<std::uint64_t>(offset + t));
    return static_cast<T>(r.uniform());
  }
  /// n Gumbel draws of the row that starts at flat index `first`, into out.
  void gumbel_row(index_t first, index_t n, T* out) const {
    if (given) {
      std::copy(given + first, given + first + n, out);
      return;
    }
    Rng r(seed);
    r.skip(static_cast<std::uint64_t>(offset + first));
    for (index_t i = 0; i < n; ++i) out[i] = static_cast<T>(r.gumbel());
  }
};

}  // namespace detail
}  // namespace einmoe
