// einmoe/routers/expert_choice.hpp - experts choose tokens (Zhou et al. 2022;
// flaxformer ExpertsChooseMaskedRouter), fast and dense.
//
// Example:
//   ExpertChoiceOptions o;
//   o.capacity = CapacitySpec::fixed(64);       // C tokens per expert per group, C <= S
//   auto r = expert_choice_routing(logits, o);  // logits [<batch>, group, experts]; r.plan
//   auto d = expert_choice_routing_dense(logits, o);   // d.combine [<batch>, group, experts, expert_capacity]
//
// Scores are the softmax over experts of each token's logits. Each expert
// takes the C tokens of its group with the highest score for it (ties: the
// lower token index), in that order (slot c is its c-th best token); the
// weight is that score. A token may be taken by 0 to E experts, so the plan
// has k = E choices per token, choice j being expert j (or none).
// aux_loss = 0 (every expert fills its buffer); z_loss = mean over tokens of
// logsumexp(logits)^2. Not for decoders: a token's routing depends on the
// later tokens of its group.
#pragma once

#include <cmath>

#include <algorithm>
#include <numeric>

#include "einmoe/routers/router.hpp"
#include "einmoe/routers/topk.hpp"

namespace einmoe {

/// Options of expert-choice routing.
struct ExpertChoiceOptions {
  /// C tokens per expert per group (1 <= C <= S): by default sized from a
  /// factor of 2 (the paper's c) by the expert-choice rule, C = min(S,
  /// max(round(S * cf / E), 1)), on every call (each token gets cf experts
  /// on average); dropless means C = S.
  CapacitySpec capacity = CapacitySpec::factor(2.0, CapacityRule::expert_choice);
};

namespace detail {
template <class T>
RouterProblem<T> expert_choice_problem(const TensorView<const T>& logits, const ExpertChoiceOptions& o,
                                       const MoEDims& dims, const char* op, Tensor<T>& hold) {
  auto p = router_problem(logits, dims, o.capacity, 1, op, hold);
  if (p.C > p.S)
    raise<value_error>(op, ": capacity ", p.C, " exceeds the group's ", p.S,
                       " tokens (each expert takes C distinct tokens)");
  return p;
}
}  // namespace detail

/// Expert-choice routing into `r`, reusing its and the workspace's memory (a
/// steady-state call allocates nothing): per expert a partial sort of its
/// group's scores. logits [<batch>, group, experts] -> a plan of C tokens per
/// expert per group (k = E choice slots per token), z_loss, statistics
/// (aux_loss 0). `in` must be empty; `call` is unused. Throws shape_error
/// for missing dims, value_error for a capacity above the group size or bad
/// logits.
template <class T>
void route_into(RouterResult<T>& r, const TensorView<const T>& logits, const ExpertChoiceOptions& o,
                const GatingInputs<T>& in, const MoEDims& dims, const RouteCall& call, RouterWorkspace<T>& ws) {
  const char* op = "expert_choice_routing";
  (void)call;
  if (!in.empty()) detail::raise<value_error>(op, ": importance, uniform and gumbel inputs belong to router top2");
  const auto p = detail::expert_choice_problem(logits, o, dims, op, ws.logits_hold());
  const index_t G = p.G, S = p.S, E = p.E, C = p.C;
  r.plan.reset(p.batch, p.group, p.experts, p.capacity, E);
  r.choice.clear();
  const detail::GroupCounts gc = detail::group_counts(ws, G);
  ws.prepare();
  detail::parallel_items(G, [&](index_t g) {
    auto& th = ws.thread();
    T* s = th.values(0, S * E);
    index_t* tok = th.indices(0, S);
    const T* L = p.logits.data() + g * S * E;
    for (index_t t = 0; t < S; ++t) detail::score_row(L + t * E, E, Score::softmax, s + t * E);
    for (index_t e = 0; e < E; ++e) {
      std::iota(tok, tok + S, index_t{0});
      auto better = [&](index_t a, index_t b) {
        const T va = s[a * E + e], vb = s[b * E + e];
        return va > vb || (va == vb && a < b);
      };
      std::partial_sort(tok, tok + C, tok + S, better);
      for (index_t c = 0; c < C; ++c) {
        const index_t t = tok[c];
        const index_t entry = (g * S + t) * E + e;
        r.plan.expert[detail::uz(entry)] = static_cast<std::int32_t>(e);
        r.plan.slot[detail::uz(entry)] = static_cast<std::int32_t>(c);
        r.plan.weight[detail::uz(entry)] = s[t * E + e];
        r.plan.slot_entry[detail::uz(r.plan.slot_index(g, e, c))] = entry;
      }
      r.plan.taken[detail::uz(g * E + e)] = static_cast<std::int32_t>(C);
    }
    gc.wanted1[g] = gc.kept1[g] = E * C;
  });
  r.aux_loss = T(0);
  r.parts.aux.clear();
  r.parts.aux2.clear();
  detail::z_parts_of(p.logits, G, S, E, r.parts);
  r.z_loss = detail::z_loss_from_parts(r.parts, G * S);
  detail::sum_stats(r.stats, r.plan, gc);
  r.stats.first_choices.assign(detail::uz(E), 0);
  r.stats.density_1.assign(detail::uz(E), 0.0);
}

/// Expert-choice routing, fast: logits [<batch>, group, experts] -> plan,
/// z_loss, statistics (see route_into; throws as it does).
template <class T>
RouterResult<T> expert_choice_routing(const TensorView<const T>& logits, const ExpertChoiceOptions& o,
                                      const MoEDims& dims = {}) {
  RouterResult<T> r;
  RouterWorkspace<T> ws;
  route_into(r, logits, o, GatingInputs<T>{}, dims, RouteCall{}, ws);
  return r;
}

/// Expert-choice routing, dense (the oracle): per group the scores
/// transposed to [experts, tokens], a full stable sort per expert, one-hot
/// of the chosen token indices, combine = score * dispatch; statistics are
/// the fast router's. Throws as route_into.
template <class T>
DenseRouterResult<T> route_dense(const TensorView<const T>& logits, const ExpertChoiceOptions& o,
                                 const GatingInputs<T>& in, const MoEDims& dims, const RouteCall& call) {
  const char* op = "expert_choice_routing_dense";
  if (!in.empty()) detail::raise<value_error>(op, ": importance, uniform and gumbel inputs belong to router top2");
  Tensor<T> hold;
  const auto p = detail::expert_choice_problem(logits, o, dims, op, hold);
  const index_t G = p.G, S = p.S, E = p.E, C = p.C;
  DenseRouterResult<T> r;
  r.combine = Tensor<T>(p.batch.with(p.group).with(p.experts).with(p.capacity));
  for (index_t g = 0; g < G; ++g) {
    std::vector<T> probs_t(detail::uz(E * S));  // [E, S]
    std::vector<T> row(detail::uz(E));
    for (index_t t = 0; t < S; ++t) {
      detail::score_row(p.logits.data() + (g * S + t) * E, E, Score::softmax, row.data());
      for (index_t e = 0; e < E; ++e) probs_t[detail::uz(e * S + t)] = row[detail::uz(e)];
    }
    for (index_t e = 0; e < E; ++e) {
      std::vector<index_t> order(detail::uz(S));
      std::iota(order.begin(), order.end(), index_t{0});
      std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
        return probs_t[detail::uz(e * S + a)] > probs_t[detail::uz(e * S + b)];
      });
      for (index_t c = 0; c < C; ++c) {  // dispatch[t, e, c] = one_hot(order[c], S)[t]
        for (index_t t = 0; t < S; ++t)
          if (order[detail::uz(c)] == t) r.combine[((g * S + t) * E + e) * C + c] = probs_t[detail::uz(e * S + t)];
      }
    }
  }
  r.z_loss = detail::z_loss_of(p.logits, G * S, E);
  r.dispatch = r.combine;
  for (auto& v : r.dispatch) v = v != T(0) ? T(1) : T(0);
  RouterResult<T> fast;
  RouterWorkspace<T> ws;
  route_into(fast, logits, o, in, dims, call, ws);
  r.stats = std::move(fast.stats);
  return r;
}

/// Expert-choice routing, dense (see route_dense).
/// Throws as expert_choice_routing.
template <class T>
DenseRouterResult<T> expert_choice_routing_dense(const TensorView<const T>& logits, const ExpertChoiceOptions& o,
                                                 const MoEDims& dims = {}) {
  return route_dense(logits, o, GatingInputs<T>{}, dims, RouteCall{});
}

}  // namespace einmoe
