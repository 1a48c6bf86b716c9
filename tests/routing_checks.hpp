// Helpers shared by the router tests (test_topk.cpp, test_expert_choice.cpp):
// logits from a list, a token's choices from a plan, and the check that a
// fast plan equals its dense one-hot oracle.
#pragma once

#include <cmath>
#include <initializer_list>
#include <vector>

#include "check.hpp"

namespace routing_checks {

using namespace einmoe;

inline Tensor<double> logits_of(index_t G, index_t S, index_t E, std::initializer_list<double> v) {
  return Tensor<double>(Shape{{"batch", G}, {"group", S}, {"experts", E}}, v);
}
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double softmax_of(std::initializer_list<double> row, std::size_t i) {
  double s = 0;
  for (double v : row) s += std::exp(v);
  return std::exp(*(row.begin() + i)) / s;
}

/// Every (expert, slot, weight) of a token, from the plan.
struct Choice {
  std::int32_t expert, slot;
  double weight;
};
inline std::vector<Choice> choices(const RoutingPlan<double>& p, index_t t) {
  std::vector<Choice> out;
  for (index_t j = 0; j < p.k; ++j) {
    const auto i = static_cast<std::size_t>(t * p.k + j);
    out.push_back({p.expert[i], p.slot[i], p.weight[i]});
  }
  return out;
}

inline void check_plan_matches_dense(const RoutingPlan<double>& plan, const DenseRouterResult<double>& d, double tol) {
  const auto combine = plan.combine_tensor();
  REQUIRE(combine.shape() == d.combine.shape());
  for (index_t i = 0; i < combine.size(); ++i) REQUIRE(std::abs(combine[i] - d.combine[i]) <= tol);
  // the plan's bookkeeping agrees with itself
  const index_t G = plan.groups(), E = plan.experts.size, C = plan.stride;
  REQUIRE(plan.stride == std::min(plan.capacity.size, plan.group.size * plan.k));
  for (index_t g = 0; g < G; ++g)
    for (index_t e = 0; e < E; ++e)
      for (index_t c = 0; c < C; ++c) {
        const index_t entry = plan.slot_entry[static_cast<std::size_t>((g * E + e) * C + c)];
        REQUIRE((entry >= 0) == (c < plan.taken[static_cast<std::size_t>(g * E + e)]));
        if (entry >= 0) {
          REQUIRE(plan.expert[static_cast<std::size_t>(entry)] == e);
          REQUIRE(plan.slot[static_cast<std::size_t>(entry)] == c);
        }
      }
}

}  // namespace routing_checks
