// einmoe/moe/experts.hpp - the expert feed-forward networks, applied through
// dense dispatch/combine tensors (the sources' way) or a routing plan (fast).
//
// Each expert e is y = act(x . wi[e] + bi[e]) . wo[e] + bo[e]:
//   wi [experts, model, hidden], wo [experts, hidden, model],
//   bi [experts, hidden], bo [experts, model] (biases optional).
//
//   // dense: expert_inputs = einsum(dispatch [G,S,E,C], x [G,S,M]) -> [E,G,C,M] ...
//   auto y1 = experts_dense(x, d.dispatch, d.combine, w, cfg);
//   // fast: gather each expert's filled rows, one GEMM per expert, scatter-add
//   auto y2 = experts_sparse(x, r.plan, w, cfg);
//
// Both give [<batch>, group, model]. experts_sparse only touches the rows the
// routing filled (and skips zero-weight choices, which the dense form never
// dispatches either).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "einmoe/core/random.hpp"
#include "einmoe/core/threads.hpp"
#include "einmoe/detail/gemm.hpp"
#include "einmoe/moe/routing_plan.hpp"
#include "einmoe/ops/einsum.hpp"
#include "einmoe/ops/elementwise.hpp"

namespace einmoe {

/// The expert hidden-layer activation.
enum class Activation { relu, gelu, gelu_tanh, silu };

inline const char* to_string(Activation a) {
  switch (a) {
    case Activation::relu: return "relu";
    case Activation::gelu: return "gelu";
    case Activation::gelu_tanh: return "gelu_tanh";
    default: return "silu";
  }
}
inline Activation parse_activation(const std::string& s) {
  for (auto a : {Activation::relu, Activation::gelu, Activation::gelu_tanh, Activation::silu})
    if (s == to_string(a)) return a;
  detail::raise<value_error>("unknown activation \"", s, "\" (relu, gelu, gelu_tanh, silu)");
}

/// Expert weights; dims are found by name (any order).
template <class T>
struct ExpertWeights {
  Tensor<T> wi;                 ///< [experts, model, hidden]
  Tensor<T> wo;                 ///< [experts, hidden, model]
  std::optional<Tensor<T>> bi;  ///< [experts, hidden]
  std::optional<Tensor<T>> bo;  ///< [experts, model]
};

/// How the experts run.
struct ExpertConfig {
  std::string experts_dim = "experts";
  std::string model_dim = "model";
  std::string hidden_dim = "hidden";
  Activation activation = Activation::relu;
  double dropout = 0.0;            ///< rate on the hidden layer (training-mode parity), in [0, 1)
  std::uint64_t dropout_seed = 0;  ///< element [e, g, c, h] is kept iff Rng::uniform_at(seed, its row-major index) >= rate
};

namespace detail {

template <class T>
void apply_activation(Activation a, T* x, index_t n) {
  switch (a) {
    case Activation::relu: for (index_t i = 0; i < n; ++i) x[i] = scalar::relu(x[i]); break;
    case Activation::gelu: for (index_t i = 0; i < n; ++i) x[i] = scalar::gelu(x[i]); break;
    case Activation::gelu_tanh: for (index_t i = 0; i < n; ++i) x[i] = scalar::gelu_tanh(x[i]); break;
    default: for (index_t i = 0; i < n; ++i) x[i] = scalar::silu(x[i]); break;
  }
}

/// Dropout on n hidden values whose [E, G, C, H] row-major indices start at `first`.
template <class T>
void apply_dropout(const ExpertConfig& cfg, T* x, index_t n, index_t first) {
  if (cfg.dropout <= 0.0) return;
  const T scale = static_cast<T>(1.0 / (1.0 - cfg.dropout));
  for (index_t i = 0; i < n; ++i)
    x[i] = Rng::uniform_at(cfg.dropout_seed, static_cast<std::uint64_t>(first + i)) >= cfg.dropout ? x[i] * scale : T(0);
}

/// The weights, validated, as [E,M,H], [E,H,M], [E,H], [E,M]: the caller's
/// tensors when already in that order (no copy), else transposed copies.
template <class T>
struct ExpertLayout {
  Tensor<T> wi_hold, wo_hold, bi_hold, bo_hold;
  const Tensor<T>* wi = nullptr;
  const Tensor<T>* wo = nullptr;
  const Tensor<T>* bi = nullptr;
  const Tensor<T>* bo = nullptr;
  index_t E = 0, M = 0, H = 0;
  Dim experts, model, hidden;
};

template <class T>
void layout_experts(ExpertLayout<T>& L, const ExpertWeights<T>& w, const ExpertConfig& cfg, const char* op) {
  if (!(cfg.dropout >= 0.0 && cfg.dropout < 1.0)) raise<value_error>(op, ": dropout rate ", cfg.dropout, " is not in [0, 1)");
  DimRegistry reg(op);
  reg.add(w.wi.shape(), "wi");
  reg.add(w.wo.shape(), "wo");
  if (w.bi) reg.add(w.bi->shape(), "bi");
  if (w.bo) reg.add(w.bo->shape(), "bo");
  L.experts = w.wi.shape().get(cfg.experts_dim, op);
  L.model = w.wi.shape().get(cfg.model_dim, op);
  L.hidden = w.wi.shape().get(cfg.hidden_dim, op);
  auto want = [&](const Tensor<T>& t, const Shape& s, Tensor<T>& hold, const char* name) {
    if (t.rank() != s.rank() || !t.shape().is_subset_of(s))
      raise<shape_error>(op, ": ", name, " has shape ", t.shape(), ", expected the dims ", s);
    return &in_order(t, s, hold);
  };
  L.wi = want(w.wi, Shape{L.experts, L.model, L.hidden}, L.wi_hold, "wi");
  L.wo = want(w.wo, Shape{L.experts, L.hidden, L.model}, L.wo_hold, "wo");
  if (w.bi) L.bi = want(*w.bi, Shape{L.experts, L.hidden}, L.bi_hold, "bi");
  if (w.bo) L.bo = want(*w.bo, Shape{L.experts, L.model}, L.bo_hold, "bo");
  L.E = L.experts.size, L.M = L.model.size, L.H = L.hidden.size;
}

}  // namespace detail

/// Dense experts: x [<batch>, group, model], dispatch and combine [<batch>,
/// group, experts, capacity] -> [<batch>, group, model], with the sources'
/// einsums: EGCM = einsum(GSEC, GSM); EGCH = act(EGCM . EMH + EH);
/// EGCM = EGCH . EHM + EM; GSM = einsum(GSEC, EGCM).
template <class T>
Tensor<T> experts_dense(const Tensor<T>& x, const Tensor<T>& dispatch, const Tensor<T>& combine,
                        const ExpertWeights<T>& w, const ExpertConfig& cfg) {
  detail::ExpertLayout<T> L;
  detail::layout_experts(L, w, cfg, "experts_dense");
  const Shape& ds = dispatch.shape();
  // [<batch>, group, experts, capacity]: the last two dims are experts and capacity.
  if (ds.rank() < 3 || ds[ds.rank() - 2].name != cfg.experts_dim)
    detail::raise<shape_error>("experts_dense: dispatch ", ds, " is not [<batch>, group, ", cfg.experts_dim, ", capacity]");
  const Dim cap = ds[ds.rank() - 1];
  const Shape tokens = ds.without({cfg.experts_dim, cap.name});
  Shape ei_shape = Shape{L.experts};
  for (index_t i = 0; i + 1 < tokens.rank(); ++i) ei_shape = ei_shape.with(tokens[i]);
  const Shape egcm = ei_shape.with(cap).with(L.model);
  const Shape egch = ei_shape.with(cap).with(L.hidden);
  const Tensor<T> expert_inputs = einsum({dispatch, x}, egcm);
  Tensor<T> h = einsum({expert_inputs, *L.wi}, egch);
  if (L.bi) h = h + *L.bi;
  detail::apply_activation(cfg.activation, h.data(), h.size());
  detail::apply_dropout(cfg, h.data(), h.size(), 0);
  Tensor<T> y = einsum({h, *L.wo}, egcm);
  if (L.bo) y = y + *L.bo;
  return einsum({combine, y}, tokens.with(L.model));
}

/// Scratch memory of experts_sparse, reused across calls (buffers only
/// grow), so that a steady-state forward pass allocates nothing large. Not
/// for concurrent use: one workspace per thread of callers.
template <class T>
struct ExpertWorkspace {
  std::vector<T> x, h, y;  // gathered rows [R, M], hidden [R, H], expert outputs [R, M]
  std::vector<index_t> offset, row_token, row_first_hidden, entry_row;
};

/// Fast experts into `out`: x [<batch>, group, model] routed by `plan` ->
/// out [<batch>, group, model] (reallocated only if its shape differs). Only
/// filled rows are computed.
template <class T>
void experts_sparse_into(Tensor<T>& out, const Tensor<T>& x_in, const RoutingPlan<T>& plan, const ExpertWeights<T>& w,
                         const ExpertConfig& cfg, ExpertWorkspace<T>& ws) {
  detail::ExpertLayout<T> L;
  detail::layout_experts(L, w, cfg, "experts_sparse");
  if (L.experts != plan.experts)
    detail::raise<shape_error>("experts_sparse: dim \"", L.experts.name, "\" has size ", L.experts.size,
                               " in the weights but ", plan.experts.size, " in the routing plan");
  const Shape xs = plan.batch.with(plan.group).with(L.model);
  if (x_in.rank() != xs.rank() || !x_in.shape().is_subset_of(xs))
    detail::raise<shape_error>("experts_sparse: inputs ", x_in.shape(), " do not match ", xs);
  Tensor<T> x_hold;
  const Tensor<T>& x = in_order(x_in, xs, x_hold);
  const index_t G = plan.groups(), S = plan.group.size, E = L.E, C = plan.capacity.size, M = L.M, H = L.H, K = plan.k;
  auto grow = [](auto& v, index_t n) {
    if (static_cast<index_t>(v.size()) < n) v.resize(detail::uz(n));
  };

  // Rows: per expert, its filled nonzero slots in (group, slot) order.
  auto& offset = ws.offset;
  grow(offset, E + 1);
  offset[0] = 0;
  for (index_t e = 0; e < E; ++e) {
    index_t n = 0;
    for (index_t g = 0; g < G; ++g)
      for (index_t c = 0; c < plan.fill[detail::uz(g * E + e)]; ++c) {
        const index_t entry = plan.slot_entry[detail::uz((g * E + e) * C + c)];
        n += plan.weight[detail::uz(entry)] != T(0) ? 1 : 0;
      }
    offset[detail::uz(e + 1)] = offset[detail::uz(e)] + n;
  }
  const index_t R = offset[detail::uz(E)];
  grow(ws.row_token, R);
  grow(ws.row_first_hidden, R);
  ws.entry_row.assign(plan.expert.size(), -1);
  for (index_t e = 0; e < E; ++e) {
    index_t r = offset[detail::uz(e)];
    for (index_t g = 0; g < G; ++g)
      for (index_t c = 0; c < plan.fill[detail::uz(g * E + e)]; ++c) {
        const index_t entry = plan.slot_entry[detail::uz((g * E + e) * C + c)];
        if (plan.weight[detail::uz(entry)] == T(0)) continue;
        ws.row_token[detail::uz(r)] = entry / K;
        ws.row_first_hidden[detail::uz(r)] = ((e * G + g) * C + c) * H;
        ws.entry_row[detail::uz(entry)] = r++;
      }
  }
  grow(ws.x, R * M);
  grow(ws.h, R * H);
  grow(ws.y, R * M);
  T* X = ws.x.data();
  T* Hb = ws.h.data();
  T* Y = ws.y.data();
  const index_t* row_token = ws.row_token.data();

  // Gather, then one GEMM pair per expert over its rows only.
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (index_t r = 0; r < R; ++r) std::copy_n(x.data() + row_token[r] * M, M, X + r * M);

  auto run_expert = [&](index_t e) {
    const index_t r0 = offset[detail::uz(e)], n = offset[detail::uz(e + 1)] - r0;
    if (n == 0) return;
    const detail::MatLayout row_major{true};
    // h = x . wi[e] over this expert's rows (one GEMM)
    detail::gemm_batched(1, n, H, M, X + r0 * M, row_major, L.wi->data() + e * M * H, row_major, Hb + r0 * H, row_major);
    for (index_t i = 0; i < n; ++i) {
      T* hr = Hb + (r0 + i) * H;
      if (L.bi) {
        const T* b = L.bi->data() + e * H;
        for (index_t j = 0; j < H; ++j) hr[j] += b[j];
      }
      detail::apply_activation(cfg.activation, hr, H);
      detail::apply_dropout(cfg, hr, H, ws.row_first_hidden[detail::uz(r0 + i)]);
    }
    // y = h . wo[e] (one GEMM)
    detail::gemm_batched(1, n, M, H, Hb + r0 * H, row_major, L.wo->data() + e * H * M, row_major, Y + r0 * M, row_major);
    if (L.bo) {
      const T* b = L.bo->data() + e * M;
      for (index_t i = 0; i < n; ++i)
        for (index_t m = 0; m < M; ++m) Y[(r0 + i) * M + m] += b[m];
    }
  };
  // Many experts: one per thread (Eigen then runs single-threaded inside).
  // Few: one at a time, each GEMM multi-threaded by Eigen.
#if defined(_OPENMP)
  const bool per_thread = E >= 2 * num_threads() && num_threads() > 1;
#pragma omp parallel for schedule(dynamic, 1) if (per_thread)
  for (index_t e = 0; e < E; ++e) run_expert(e);
#else
  for (index_t e = 0; e < E; ++e) run_expert(e);
#endif

  // Combine: each token sums its weighted expert rows.
  if (out.shape() != xs) out = Tensor<T>(xs, uninitialized);
  const index_t tokens = G * S;
  const index_t* entry_row = ws.entry_row.data();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (index_t t = 0; t < tokens; ++t) {
    T* o = out.data() + t * M;
    std::fill(o, o + M, T(0));
    for (index_t j = 0; j < K; ++j) {
      const index_t r = entry_row[t * K + j];
      if (r < 0) continue;
      const T wgt = plan.weight[detail::uz(t * K + j)];
      const T* yr = Y + r * M;
      for (index_t m = 0; m < M; ++m) o[m] += wgt * yr[m];
    }
  }
}

/// Fast experts: x [<batch>, group, model] routed by `plan` ->
/// [<batch>, group, model]. Only filled rows are computed.
template <class T>
Tensor<T> experts_sparse(const Tensor<T>& x, const RoutingPlan<T>& plan, const ExpertWeights<T>& w,
                         const ExpertConfig& cfg) {
  ExpertWorkspace<T> ws;
  Tensor<T> out(Shape(), uninitialized);
  experts_sparse_into(out, x, plan, w, cfg, ws);
  return out;
}

}  // namespace einmoe
