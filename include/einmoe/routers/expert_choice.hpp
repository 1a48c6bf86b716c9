// einmoe/routers/expert_choice.hpp - experts choose tokens (Zhou et al. 2022;
// flaxformer ExpertsChooseMaskedRouter), fast and dense.
//
// Example:
//   ExpertChoiceOptions o;
//   o.capacity = Dim("expert_capacity", 64);    // C tokens per expert per group, C <= S
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

#include "einmoe/routers/topk.hpp"
#include "einmoe/routers/topk_dense.hpp"

namespace einmoe {

struct ExpertChoiceOptions {
  /// C tokens per expert per group (1 <= C <= S). Size 0 (the default) sizes
  /// it from capacity_factor on every call: C = min(S, max(round(S * cf /
  /// E), 1)), the rule of Zhou et al. (2022) and flaxformer's
  /// ExpertsChooseMaskedRouter (each token gets cf experts on average).
  Dim capacity{"expert_capacity", 0};
  double capacity_factor = 2.0;  ///< the paper's default c = 2
  std::string group_dim = "group";
  std::string experts_dim = "experts";
};

namespace detail {
template <class T>
RouterProblem<T> expert_choice_problem(const Tensor<T>& logits, const ExpertChoiceOptions& o, const char* op) {
  Dim cap = o.capacity;
  if (cap.size == 0) {
    if (!(o.capacity_factor > 0 && std::isfinite(o.capacity_factor)))
      raise<value_error>(op, ": no capacity: set capacity to a positive size, or capacity_factor (now ", o.capacity_factor,
                         ") to a positive number");
    const Shape& s = logits.shape();
    const index_t S = s.has(o.group_dim) ? s.size_of(o.group_dim) : 0;
    const index_t E = s.has(o.experts_dim) ? std::max<index_t>(s.size_of(o.experts_dim), 1) : 1;
    const double c = std::round(static_cast<double>(S) * o.capacity_factor / static_cast<double>(E));
    cap.size = std::min<index_t>(S, std::max<index_t>(1, c >= 9.0e18 ? S : static_cast<index_t>(c)));
  }
  auto p = router_problem(logits, o.group_dim, o.experts_dim, std::optional<Dim>(cap), cap.name, op);
  if (p.C > p.S)
    raise<value_error>(op, ": capacity ", p.C, " exceeds the group's ", p.S, " tokens (each expert takes C distinct tokens)");
  return p;
}
}  // namespace detail

/// Expert-choice routing, fast: per expert a partial sort of its group's
/// scores. logits [<batch>, group, experts] -> a plan of C tokens per expert
/// per group (k = E choice slots per token), z_loss, statistics.
template <class T>
RouterResult<T> expert_choice_routing(const Tensor<T>& logits, const ExpertChoiceOptions& o) {
  const char* op = "expert_choice_routing";
  const auto p = detail::expert_choice_problem(logits, o, op);
  const index_t G = p.G, S = p.S, E = p.E, C = p.C;
  RouterResult<T> r;
  r.plan.reset(p.batch, p.group, p.experts, p.capacity, E);
  std::vector<index_t> kept(detail::uz(G), 0), none(detail::uz(G), 0);
  detail::parallel_items(G, [&](index_t g) {
    std::vector<T> s(detail::uz(S * E));
    const T* L = p.logits.data() + g * S * E;
    for (index_t t = 0; t < S; ++t) detail::score_row(L + t * E, E, Score::softmax, s.data() + t * E);
    std::vector<index_t> tok(detail::uz(S));
    for (index_t e = 0; e < E; ++e) {
      std::iota(tok.begin(), tok.end(), index_t{0});
      auto better = [&](index_t a, index_t b) {
        const T va = s[detail::uz(a * E + e)], vb = s[detail::uz(b * E + e)];
        return va > vb || (va == vb && a < b);
      };
      std::partial_sort(tok.begin(), tok.begin() + C, tok.end(), better);
      for (index_t c = 0; c < C; ++c) {
        const index_t t = tok[detail::uz(c)];
        const index_t entry = (g * S + t) * E + e;
        r.plan.expert[detail::uz(entry)] = static_cast<std::int32_t>(e);
        r.plan.slot[detail::uz(entry)] = static_cast<std::int32_t>(c);
        r.plan.weight[detail::uz(entry)] = s[detail::uz(t * E + e)];
        r.plan.slot_entry[detail::uz(r.plan.slot_index(g, e, c))] = entry;
      }
      r.plan.fill[detail::uz(g * E + e)] = static_cast<std::int32_t>(C);
    }
    kept[detail::uz(g)] = E * C;
  });
  detail::z_parts_of(p.logits, G, S, E, r.parts);
  r.z_loss = detail::z_loss_from_parts(r.parts, G * S);
  detail::sum_stats(r.stats, r.plan, kept, none, kept, none);
  r.stats.first_choices.assign(detail::uz(E), 0);
  r.stats.density_1.assign(detail::uz(E), 0.0);
  return r;
}

/// Expert-choice routing, dense (the oracle): per group the scores
/// transposed to [experts, tokens], a full stable sort per expert, one-hot
/// of the chosen token indices, combine = score * dispatch.
template <class T>
DenseRouterResult<T> expert_choice_routing_dense(const Tensor<T>& logits, const ExpertChoiceOptions& o) {
  const char* op = "expert_choice_routing_dense";
  const auto p = detail::expert_choice_problem(logits, o, op);
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
      std::stable_sort(order.begin(), order.end(),
                       [&](index_t a, index_t b) { return probs_t[detail::uz(e * S + a)] > probs_t[detail::uz(e * S + b)]; });
      for (index_t c = 0; c < C; ++c) {  // dispatch[t, e, c] = one_hot(order[c], S)[t]
        for (index_t t = 0; t < S; ++t)
          if (order[detail::uz(c)] == t) r.combine[((g * S + t) * E + e) * C + c] = probs_t[detail::uz(e * S + t)];
      }
    }
  }
  r.z_loss = detail::z_loss_of(p.logits, G * S, E);
  r.dispatch = r.combine;
  for (auto& v : r.dispatch) v = v != T(0) ? T(1) : T(0);
  return r;
}

}  // namespace einmoe
