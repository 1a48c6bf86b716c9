// einmoe/routers/route.hpp - the routers of a layer, as one choice:
// RouterOptions is a std::variant of their option structs, and every
// question about "the layer's router" is answered here, in one place.
//
// Example:
//   TopKOptions t;
//   t.k = 8;
//   RouterOptions router = t;                          // or Top2Options{}, ExpertChoiceOptions{}
//   RouterResult<float> r;
//   RouterWorkspace<float> ws;
//   route_into(r, logits, router, GatingInputs<float>{}, MoEDims{}, RouteCall{}, ws);   // logits [<batch>, group, experts]
//   DenseRouterResult<float> d = route_dense(logits, router, GatingInputs<float>{}, MoEDims{}, RouteCall{});
//   const char* name = router_name(router);            // "topk"
//
// Adding a router (CONTRIBUTING.md has the checklist): one header that
// defines its options struct and, for them, route_into, route_dense,
// finish_losses, check_router_options and router_name, as topk.hpp does;
// one alternative in RouterOptions below; its tests.
#pragma once

#include <string>
#include <variant>

#include "einmoe/routers/expert_choice.hpp"
#include "einmoe/routers/router.hpp"
#include "einmoe/routers/top2_gating.hpp"
#include "einmoe/routers/top2_gating_dense.hpp"
#include "einmoe/routers/topk.hpp"
#include "einmoe/routers/topk_dense.hpp"

namespace einmoe {

/// A layer's router: one of the routers' option structs.
using RouterOptions = std::variant<Top2Options, TopKOptions, ExpertChoiceOptions>;

// ---- what each router says about itself ------------------------------------

inline const char* router_name(const Top2Options&) { return "top2"; }
inline const char* router_name(const TopKOptions&) { return "topk"; }
inline const char* router_name(const ExpertChoiceOptions&) { return "expert-choice"; }

/// The router's options checked against E experts (those that can be
/// checked before any logits arrive); value_error / shape_error naming op.
inline void check_router_options(const Top2Options& o, index_t E, const char* op) {
  (void)E;
  if (std::isnan(o.threshold)) detail::raise<value_error>(op, ": threshold is NaN");
}
inline void check_router_options(const TopKOptions& o, index_t E, const char* op) {
  detail::check_topk_options(o, E, op);
}
inline void check_router_options(const ExpertChoiceOptions&, index_t, const char*) {}

/// The losses of `groups` groups of S tokens and E experts, finished from
/// their per-group pieces in group order (as route_into finishes them).
/// Never throws.
template <class T>
void finish_losses(const Top2Options&, const LossParts<T>& parts, index_t groups, index_t S, index_t E, T& aux, T& z) {
  aux = groups * S > 0 ? detail::top2_aux_loss(parts, groups, E) : T(0);
  z = T(0);
}
template <class T>
void finish_losses(const TopKOptions&, const LossParts<T>& parts, index_t groups, index_t S, index_t E, T& aux, T& z) {
  aux = detail::topk_aux_loss(parts, groups, E);
  z = detail::z_loss_from_parts(parts, groups * S);
}
template <class T>
void finish_losses(const ExpertChoiceOptions&, const LossParts<T>& parts, index_t groups, index_t S, index_t, T& aux,
                   T& z) {
  aux = T(0);
  z = detail::z_loss_from_parts(parts, groups * S);
}

// ---- the dispatch ------------------------------------------------------------

/// "top2", "topk" or "expert-choice".
/// Never throws.
inline const char* router_name(const RouterOptions& o) {
  return std::visit([](const auto& r) { return router_name(r); }, o);
}
/// The default options of the router named `name` (router_name's names);
/// value_error for another name.
inline RouterOptions parse_router(const std::string& name) {
  if (name == "top2") return Top2Options{};
  if (name == "topk") return TopKOptions{};
  if (name == "expert-choice") return ExpertChoiceOptions{};
  detail::raise<value_error>("unknown router \"", name, "\" (top2, topk, expert-choice)");
}
inline void check_router_options(const RouterOptions& o, index_t E, const char* op) {
  std::visit([&](const auto& r) { check_router_options(r, E, op); }, o);
}
/// The router's capacity rule.
/// Never throws.
inline const CapacitySpec& router_capacity(const RouterOptions& o) {
  return std::visit([](const auto& r) -> const CapacitySpec& { return r.capacity; }, o);
}

/// Routes logits [<batch>, group, experts] into `r` with the chosen router
/// (see each router's route_into for what it fills and throws).
template <class T>
void route_into(RouterResult<T>& r, const TensorView<const T>& logits, const RouterOptions& o,
                const GatingInputs<T>& in, const MoEDims& dims, const RouteCall& call, RouterWorkspace<T>& ws) {
  std::visit([&](const auto& opt) { route_into(r, logits, opt, in, dims, call, ws); }, o);
}
/// The chosen router's dense oracle: logits [<batch>, group, experts] ->
/// combine and dispatch [<batch>, group, experts, expert_capacity], losses,
/// statistics.
/// Throws as the chosen router's route_dense.
template <class T>
DenseRouterResult<T> route_dense(const TensorView<const T>& logits, const RouterOptions& o, const GatingInputs<T>& in,
                                 const MoEDims& dims, const RouteCall& call) {
  return std::visit([&](const auto& opt) { return route_dense(logits, opt, in, dims, call); }, o);
}
/// The chosen router's losses from per-group pieces (see finish_losses).
/// Never throws.
template <class T>
void finish_losses(const RouterOptions& o, const LossParts<T>& parts, index_t groups, index_t S, index_t E, T& aux,
                   T& z) {
  std::visit([&](const auto& opt) { finish_losses(opt, parts, groups, S, E, aux, z); }, o);
}

}  // namespace einmoe
