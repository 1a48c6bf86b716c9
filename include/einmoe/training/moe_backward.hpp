// einmoe/training/moe_backward.hpp - the training forward and the backward
// pass of an MoE layer, on the layer's kept weights (training/tape.hpp).
//
// Forward: the router as in inference; the experts over their routed rows
// in fixed blocks of kTrainBlock rows, keeping the pre-activations and the
// outputs; the combine as in inference; the shared expert in fixed blocks
// of tokens.
//
// Backward, in a fixed order whatever the thread count:
//   1. dL/d(weight of each kept choice) = <dy[token], y[row]>;
//   2. per expert (experts spread over the threads, each expert's rows in one
//      single-threaded pass): the weight gradients, summed over its rows in
//      row order, and each row's input gradient; dx = the sum of a token's
//      rows' input gradients, in choice order;
//   3. dlogits from the router (training/router_backward.hpp) with the
//      losses' coefficients; dwg = x^T dlogits; dx += dlogits wg^T;
//   4. the shared expert: its factor's and its FFN's gradients, added to dx.
#pragma once

#include <algorithm>
#include <vector>

#include "einmoe/core/threads.hpp"
#include "einmoe/training/tape.hpp"

namespace einmoe::detail {

/// Rows of one expert per item of the training forward.
constexpr index_t kTrainBlock = 128;

/// The gradients in the kept weights' canonical layout (TrainWeights), and
/// dx [tokens, model] in the grouped inputs' order.
template <class T>
struct CanonicalGrads {
  AlignedVector<T> dx, wg, wi, wo, wi_gate, bi, bi_gate, bo, s_wi, s_wo, s_wi_gate, s_gate;
};

/// body(t0, t1) for fixed blocks of tokens [t0, t1), spread over the
/// threads (work that is independent per token).
template <class Body>
void for_token_blocks(index_t n, Body&& body) {
  constexpr index_t block = 256;
  parallel_items((n + block - 1) / block, [&](index_t i) { body(i * block, std::min(n, (i + 1) * block)); });
}

template <class T>
T dot_row(const T* a, const T* b, index_t n) {
  T s = T(0);
  for (index_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

/// The experts of a training forward over `plan`: keeps their rows, pre-
/// activations and outputs in the tape and writes the combine into out
/// [tokens, model].
template <class T>
void train_forward_experts(TapeData<T>& tp, const TrainWeights<T>& w, T* out) {
  const PlainFfn<T> f = w.experts();
  const RoutingPlan<T>& plan = tp.routed.plan;
  const index_t M = f.M, H = f.H, E = f.E;
  auto& rows = tp.rows;
  expert_rows(plan, H, rows);
  const index_t R = rows.offset[uz(E)];
  rows.y.resize(uz(mul_size(R, M, "expert outputs")));
  tp.pre_u.resize(tp.recompute ? 0 : uz(mul_size(R, H, "expert pre-activations")));
  tp.pre_g.resize(f.gated() ? tp.pre_u.size() : 0);
  rows.items.clear();
  for (index_t e = 0; e < E; ++e)
    for (index_t r = rows.offset[uz(e)]; r < rows.offset[uz(e + 1)]; r += kTrainBlock)
      rows.items.push_back({e, r, std::min(kTrainBlock, rows.offset[uz(e + 1)] - r)});
  std::vector<FfnBackwardScratch<T>> scratch(uz(std::max(1, num_threads())));
  const T* px = tp.x.data();
  parallel_items(static_cast<index_t>(rows.items.size()), [&](index_t i) {
    const auto& it = rows.items[uz(i)];
    auto& s = scratch[uz(thread_index())];
    T* xb = FfnScratch<T>::get(s.x, it.rows * M);
    for (index_t j = 0; j < it.rows; ++j) {
      const T* src = px + rows.row_token[uz(it.row + j)] * M;
      std::copy(src, src + M, xb + j * M);
    }
    if (f.bf16) round_inputs(xb, it.rows * M, s);
    const HiddenDropout drop{tp.dropout, tp.dropout_seed, rows.row_first_hidden.data() + it.row};
    const index_t n = it.rows * H;
    T* pu = FfnScratch<T>::get(s.pu, n);
    T* pg = f.gated() ? FfnScratch<T>::get(s.pg, n) : nullptr;
    ffn_train_rows(f, it.expert, xb, it.rows, pu, pg, rows.y.data() + it.row * M, tp.dropout > 0.0 ? &drop : nullptr,
                   s);
    if (!tp.recompute) {  // (computed in aligned scratch, as a recomputation is: the same bits)
      std::copy(pu, pu + n, tp.pre_u.data() + it.row * H);
      if (pg) std::copy(pg, pg + n, tp.pre_g.data() + it.row * H);
    }
  });
  combine_rows(plan, rows, M, out);
}

/// The shared expert of a training forward: out [tokens, model] +=
/// factor * FFN(x), factor = sigmoid(x . gate) (or 1); keeps its pre-
/// activations, outputs and factors.
template <class T>
void train_forward_shared(TapeData<T>& tp, const TrainWeights<T>& w, T* out) {
  if (!w.s_wi) return;
  const PlainFfn<T> f = w.shared();
  const index_t N = tp.x.size() / std::max<index_t>(f.M, 1), M = f.M, H = f.H;
  tp.s_pre_u.resize(tp.recompute ? 0 : uz(mul_size(N, H, "shared pre-activations")));
  tp.s_pre_g.resize(f.gated() ? tp.s_pre_u.size() : 0);
  tp.s_y.resize(uz(N * M));
  tp.s_factor.resize(uz(N));
  const index_t items = (N + kTrainBlock - 1) / kTrainBlock;
  std::vector<FfnBackwardScratch<T>> scratch(uz(std::max(1, num_threads())));
  parallel_items(items, [&](index_t i) {
    const index_t r0 = i * kTrainBlock, m = std::min(kTrainBlock, N - r0), n = m * H;
    auto& s = scratch[uz(thread_index())];
    T* pu = FfnScratch<T>::get(s.pu, n);
    T* pg = f.gated() ? FfnScratch<T>::get(s.pg, n) : nullptr;
    const T* xs = tp.x.data() + r0 * M;
    if (f.bf16) {
      T* c = FfnScratch<T>::get(s.x, m * M);
      std::copy(xs, xs + m * M, c);
      round_inputs(c, m * M, s);
      xs = c;
    }
    ffn_train_rows(f, 0, xs, m, pu, pg, tp.s_y.data() + r0 * M, nullptr, s);
    if (!tp.recompute) {
      std::copy(pu, pu + n, tp.s_pre_u.data() + r0 * H);
      if (pg) std::copy(pg, pg + n, tp.s_pre_g.data() + r0 * H);
    }
  });
  for (index_t t = 0; t < N; ++t) {
    const T* xt = tp.x.data() + t * M;
    const T fac = w.s_gate ? scalar::sigmoid(dot_row(xt, w.s_gate->data(), M)) : T(1);
    tp.s_factor[uz(t)] = fac;
    for (index_t j = 0; j < M; ++j) out[t * M + j] += fac * tp.s_y[uz(t * M + j)];
  }
}

/// The pre-activations of expert e's m rows x (one expert's, or the shared
/// expert's all) into s.pu / s.pg, in the training forward's blocks of
/// kTrainBlock rows (aligned, as there): the bits the forward computed.
template <class T>
void recompute_pre(const PlainFfn<T>& f, index_t e, const T* x, index_t m, FfnBackwardScratch<T>& s) {
  const index_t H = f.H;
  T* pu = FfnScratch<T>::get(s.pu, m * H);
  T* pg = f.gated() ? FfnScratch<T>::get(s.pg, m * H) : nullptr;
  for (index_t j = 0; j < m; j += kTrainBlock)
    ffn_pre_rows(f, e, x + j * f.M, std::min(kTrainBlock, m - j), pu + j * H, pg ? pg + j * H : nullptr);
}

/// PlainFfnGrads pointing into g's expert (or shared) buffers, sized and
/// zeroed for `f`.
template <class T>
PlainFfnGrads<T> ffn_grads(const PlainFfn<T>& f, bool biases_in, bool bias_gate, bool bias_out, AlignedVector<T>& wi,
                           AlignedVector<T>& wo, AlignedVector<T>& wi_gate, AlignedVector<T>& bi,
                           AlignedVector<T>& bi_gate, AlignedVector<T>& bo) {
  const index_t E = f.E, M = f.M, H = f.H;
  wi.assign(uz(E * M * H), T(0));
  wo.assign(uz(E * H * M), T(0));
  wi_gate.assign(f.gated() ? uz(E * M * H) : 0, T(0));
  bi.assign(biases_in ? uz(E * H) : 0, T(0));
  bi_gate.assign(bias_gate ? uz(E * H) : 0, T(0));
  bo.assign(bias_out ? uz(E * M) : 0, T(0));
  auto p = [](AlignedVector<T>& v) { return v.empty() ? nullptr : v.data(); };
  return {wi.data(), wo.data(), p(wi_gate), p(bi), p(bi_gate), p(bo)};
}

/// Steps 1 and 2 of the file comment: dweight [tokens * k] and the
/// expert weight gradients; adds the routed rows' input gradients into dx.
template <class T>
void experts_backward(const TapeData<T>& tp, const TrainWeights<T>& w, const T* dy, std::vector<T>& dweight,
                      CanonicalGrads<T>& g) {
  const PlainFfn<T> f = w.experts();
  const RoutingPlan<T>& plan = tp.routed.plan;
  const auto& rows = tp.rows;
  const index_t M = f.M, H = f.H, E = f.E, K = plan.k, N = plan.tokens();
  dweight.assign(uz(N * K), T(0));
  for_token_blocks(N, [&](index_t t0, index_t t1) {
    for (index_t entry = t0 * K; entry < t1 * K; ++entry) {
      const index_t r = rows.entry_row[uz(entry)];
      if (r >= 0) dweight[uz(entry)] = dot_row(dy + (entry / K) * M, rows.y.data() + r * M, M);
    }
  });
  const PlainFfnGrads<T> pg = ffn_grads(f, w.bi.has_value(), w.bi_gate.has_value(), w.bo.has_value(), g.wi, g.wo,
                                        g.wi_gate, g.bi, g.bi_gate, g.bo);
  const index_t R = rows.offset[uz(E)];
  AlignedVector<T> dxr(uz(R * M));
  std::vector<index_t> row_entry(uz(R));
  for (index_t entry = 0; entry < N * K; ++entry)
    if (rows.entry_row[uz(entry)] >= 0) row_entry[uz(rows.entry_row[uz(entry)])] = entry;
  std::vector<FfnBackwardScratch<T>> scratch(uz(std::max(1, num_threads())));
  parallel_items(E, [&](index_t e) {
    const index_t r0 = rows.offset[uz(e)], m = rows.offset[uz(e + 1)] - r0;
    if (m == 0) return;
    auto& s = scratch[uz(thread_index())];
    T* xb = FfnScratch<T>::get(s.x, m * M);
    T* db = FfnScratch<T>::get(s.dy, m * M);
    for (index_t j = 0; j < m; ++j) {
      const index_t t = rows.row_token[uz(r0 + j)];
      std::copy(tp.x.data() + t * M, tp.x.data() + (t + 1) * M, xb + j * M);
    }
    if (f.bf16) round_inputs(xb, m * M, s);
    for (index_t j = 0; j < m; ++j) {
      const index_t entry = row_entry[uz(r0 + j)];
      const T wgt = plan.weight[uz(entry)];
      const T* dyt = dy + (entry / K) * M;
      for (index_t i = 0; i < M; ++i) db[j * M + i] = wgt * dyt[i];
    }
    const HiddenDropout drop{tp.dropout, tp.dropout_seed, rows.row_first_hidden.data() + r0};
    const T *pu = nullptr, *pgate = nullptr;
    if (tp.recompute) {
      recompute_pre(f, e, xb, m, s);
      pu = s.pu.data(), pgate = f.gated() ? s.pg.data() : nullptr;
    } else {
      pu = tp.pre_u.data() + r0 * H, pgate = f.gated() ? tp.pre_g.data() + r0 * H : nullptr;
    }
    ffn_backward_rows(f, e, xb, db, m, pu, pgate, tp.dropout > 0.0 ? &drop : nullptr, pg, dxr.data() + r0 * M, s);
  });
  for_token_blocks(N, [&](index_t t0, index_t t1) {
    for (index_t t = t0; t < t1; ++t)
      for (index_t j = 0; j < K; ++j) {
        const index_t r = rows.entry_row[uz(t * K + j)];
        if (r < 0) continue;
        for (index_t i = 0; i < M; ++i) g.dx[uz(t * M + i)] += dxr[uz(r * M + i)];
      }
  });
}

/// Step 4: the shared expert's gradients; adds its input gradient into dx.
template <class T>
void shared_backward(const TapeData<T>& tp, const TrainWeights<T>& w, const T* dy, CanonicalGrads<T>& g) {
  if (!w.s_wi) return;
  const PlainFfn<T> f = w.shared();
  const index_t M = f.M, N = tp.x.size() / std::max<index_t>(M, 1);
  AlignedVector<T> unused_bi, unused_big, unused_bo;
  const PlainFfnGrads<T> pg =
      ffn_grads(f, false, false, false, g.s_wi, g.s_wo, g.s_wi_gate, unused_bi, unused_big, unused_bo);
  AlignedVector<T> dys(uz(N * M)), dxs(uz(N * M));
  g.s_gate.assign(w.s_gate ? uz(M) : 0, T(0));
  for (index_t t = 0; t < N; ++t) {
    const T fac = tp.s_factor[uz(t)];
    const T* dyt = dy + t * M;
    for (index_t i = 0; i < M; ++i) dys[uz(t * M + i)] = fac * dyt[i];
    if (w.s_gate) {  // factor = sigmoid(x . gate)
      const T dz = dot_row(dyt, tp.s_y.data() + t * M, M) * fac * (T(1) - fac);
      const T* xt = tp.x.data() + t * M;
      for (index_t i = 0; i < M; ++i) g.s_gate[uz(i)] += dz * xt[i];
      for (index_t i = 0; i < M; ++i) g.dx[uz(t * M + i)] += dz * w.s_gate->data()[i];
    }
  }
  FfnBackwardScratch<T> s;
  {
    [[maybe_unused]] SingleThread one;
    const T* xs = tp.x.data();
    AlignedVector<T> xr;
    if (f.bf16) {
      xr.assign(xs, xs + N * M);
      round_inputs(xr.data(), N * M, s);
      xs = xr.data();
    }
    const T *pu = tp.s_pre_u.data(), *pgate = f.gated() ? tp.s_pre_g.data() : nullptr;
    if (tp.recompute) {
      recompute_pre(f, 0, xs, N, s);
      pu = s.pu.data(), pgate = f.gated() ? s.pg.data() : nullptr;
    }
    ffn_backward_rows(f, 0, xs, dys.data(), N, pu, pgate, nullptr, pg, dxs.data(), s);
  }
  for (index_t i = 0; i < N * M; ++i) g.dx[uz(i)] += dxs[uz(i)];
}

/// The layer's backward pass (the file comment): dy [tokens, model] in the
/// grouped inputs' order -> g.
template <class T>
void moe_backward(const TapeData<T>& tp, const TrainWeights<T>& w, const RouterOptions& router, const T* dy,
                  const LossCoefficients& c, CanonicalGrads<T>& g) {
  const index_t M = w.M(), E = w.E(), N = tp.routed.plan.tokens();
  g.dx.assign(uz(N * M), T(0));
  std::vector<T> dweight;
  experts_backward(tp, w, dy, dweight, g);
  GatingInputs<T> in;
  if (tp.importance) in.importance = TensorView<const T>(*tp.importance);
  const Tensor<T> dl = route_backward(TensorView<const T>(tp.logits), tp.routed, router, in, dweight, c);
  g.wg.assign(uz(M * E), T(0));
  {
    [[maybe_unused]] SingleThread one;
    const bool dnnl = w.experts().dnnl;
    gemm_rm(true, false, M, E, N, tp.x.data(), dl.data(), false, g.wg.data(), dnnl);
    gemm_rm(false, true, N, M, E, dl.data(), w.wg.data(), true, g.dx.data(), dnnl);
  }
  shared_backward(tp, w, dy, g);
}

}  // namespace einmoe::detail
