// einmoe/experts/experts.hpp - the expert feed-forward networks, applied
// through dense dispatch/combine tensors (the sources' way, the oracle) or a
// routing plan (fast).
//
// Expert e is a plain or a gated (GLU) feed-forward network:
//   plain:  y = act(x . wi[e] + bi[e]) . wo[e] + bo[e]
//   gated:  y = (act(x . wi_gate[e] + bi_gate[e]) * (x . wi[e] + bi[e])) . wo[e] + bo[e]
// with wi, wi_gate [experts, model, hidden], wo [experts, hidden, model],
// bi, bi_gate [experts, hidden], bo [experts, model] (biases optional; dims
// found by name, in any order). SwiGLU is act = silu, GeGLU gelu / gelu_tanh.
//
// Example:
//   // x [batch, group, model]; d = top2_gating_dense(logits, o), r = top2_gating(logits, o)
//   // dense: expert_inputs = einsum(dispatch [G,S,E,C], x [G,S,M]) -> [E,G,C,M] ...
//   Tensor<float> y1 = experts_dense(x, d.dispatch, d.combine, w, opt);
//   // fast: weights laid out once, then each expert's filled rows only
//   PackedExperts<float> pe(w, opt);             // opt.precision, opt.backend
//   Tensor<float> y2 = experts_sparse(x, r.plan, pe);   // y1, y2 [batch, group, model]
//
// Both give [<batch>, group, model]. experts_sparse computes only the rows
// the routing filled (and skips zero-weight choices, which the dense form
// never dispatches either). It splits each expert's rows into fixed blocks
// (kernels/ffn.hpp) and runs the blocks on all threads; a block's result
// never depends on the thread count, and the combine adds each token's
// choices in a fixed order, so outputs are bitwise the same on any number of
// threads.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "einmoe/core/bfloat16.hpp"
#include "einmoe/core/random.hpp"
#include "einmoe/core/threads.hpp"
#include "einmoe/detail/ffn_rows.hpp"
#include "einmoe/kernels/activation.hpp"
#include "einmoe/kernels/ffn.hpp"
#include "einmoe/kernels/precision.hpp"
#include "einmoe/ops/einsum.hpp"
#include "einmoe/ops/elementwise.hpp"
#include "einmoe/routers/router.hpp"

namespace einmoe {

/// Expert weights; dims are found by name (any order). T is float, double or
/// bfloat16 (checkpoint weights, laid out by PackedExperts without a copy to
/// fp32 first).
template <class T>
struct ExpertWeights {
  TensorView<const T> wi;                      ///< [experts, model, hidden]
  TensorView<const T> wo;                      ///< [experts, hidden, model]
  std::optional<TensorView<const T>> wi_gate;  ///< [experts, model, hidden]: makes the experts gated (GLU)
  std::optional<TensorView<const T>> bi;       ///< [experts, hidden]
  std::optional<TensorView<const T>> bi_gate;  ///< [experts, hidden] (gated experts)
  std::optional<TensorView<const T>> bo;       ///< [experts, model]
};

/// How the experts run.
struct ExpertOptions {
  MoEDims dims;                              ///< the experts, model and hidden dims' names
  Activation activation = Activation::relu;  ///< gated experts: the gate's activation
  double dropout = 0.0;                      ///< rate on the hidden layer (training-mode parity), in [0, 1); fp32 only
  std::uint64_t dropout_seed =
      0;  ///< element [e, g, c, h] is kept iff Rng::uniform_at(seed, its row-major index) >= rate
  Precision precision = Precision::fp32;  ///< of the expert weights (kernels/precision.hpp)
  Backend backend = Backend::automatic;   ///< the GEMM library (kernels/precision.hpp)
};

namespace detail {

/// Dropout on n hidden values whose [E, G, C, H] row-major indices start at `first`.
template <class T>
void apply_dropout(const ExpertOptions& cfg, T* x, index_t n, index_t first) {
  if (cfg.dropout <= 0.0) return;
  const T scale = static_cast<T>(1.0 / (1.0 - cfg.dropout));
  for (index_t i = 0; i < n; ++i)
    x[i] =
        Rng::uniform_at(cfg.dropout_seed, static_cast<std::uint64_t>(first + i)) >= cfg.dropout ? x[i] * scale : T(0);
}

/// The dims of validated expert weights.
struct ExpertDims {
  Dim experts, model, hidden;
};

/// Checks names, sizes and the options; shape_error / value_error naming the tensor.
template <class S>
ExpertDims check_expert_weights(const ExpertWeights<S>& w, const ExpertOptions& o, const char* op) {
  if (!(o.dropout >= 0.0 && o.dropout < 1.0)) raise<value_error>(op, ": dropout rate ", o.dropout, " is not in [0, 1)");
  if (o.dropout > 0.0 && o.precision != Precision::fp32)
    raise<value_error>(op, ": dropout (training-mode parity) runs in fp32 precision only");
  if (w.bi_gate && !w.wi_gate) raise<value_error>(op, ": bi_gate given without wi_gate");
  DimRegistry reg(op);
  reg.add(w.wi.shape(), "wi");
  reg.add(w.wo.shape(), "wo");
  if (w.wi_gate) reg.add(w.wi_gate->shape(), "wi_gate");
  if (w.bi) reg.add(w.bi->shape(), "bi");
  if (w.bi_gate) reg.add(w.bi_gate->shape(), "bi_gate");
  if (w.bo) reg.add(w.bo->shape(), "bo");
  ExpertDims d{w.wi.shape().get(o.dims.experts, op), w.wi.shape().get(o.dims.model, op),
               w.wi.shape().get(o.dims.hidden, op)};
  auto want = [&](const Shape& got, const Shape& s, const char* name) {
    if (got.rank() != s.rank() || !got.is_subset_of(s))
      raise<shape_error>(op, ": ", name, " has shape ", got, ", expected the dims ", s);
  };
  want(w.wi.shape(), Shape{d.experts, d.model, d.hidden}, "wi");
  want(w.wo.shape(), Shape{d.experts, d.hidden, d.model}, "wo");
  if (w.wi_gate) want(w.wi_gate->shape(), Shape{d.experts, d.model, d.hidden}, "wi_gate");
  if (w.bi) want(w.bi->shape(), Shape{d.experts, d.hidden}, "bi");
  if (w.bi_gate) want(w.bi_gate->shape(), Shape{d.experts, d.hidden}, "bi_gate");
  if (w.bo) want(w.bo->shape(), Shape{d.experts, d.model}, "bo");
  return d;
}

/// A bias as a flat T vector in [experts, n] order (validated finite).
template <class T, class S>
std::vector<T> flat_bias(const std::optional<TensorView<const S>>& b, const Dim& experts, const Dim& n,
                         const char* name) {
  if (!b) return {};
  Tensor<S> hold;
  const TensorView<const S> t = in_order(*b, Shape{experts, n}, hold);
  std::vector<T> out(detail::uz(t.size()));
  for (index_t i = 0; i < t.size(); ++i) {
    const auto v = static_cast<float>(t.data()[i]);
    if (!std::isfinite(v)) raise<value_error>("expert weights: ", name, " element ", i, " is ", v);
    out[detail::uz(i)] = static_cast<T>(t.data()[i]);
  }
  return out;
}

}  // namespace detail

/// Dense experts: x [<batch>, group, model], dispatch and combine [<batch>,
/// group, experts, capacity] -> [<batch>, group, model], with the sources'
/// einsums: EGCM = einsum(GSEC, GSM); EGCH = act(EGCM . EMH + EH) (gated:
/// * (EGCM . EMH + EH)); EGCM = EGCH . EHM + EM; GSM = einsum(GSEC, EGCM).
/// Full precision (the oracle): opt.precision must be fp32.
/// Throws shape_error when x, dispatch, combine and the weights disagree on a dim,
/// value_error unless opt.precision is fp32.
template <class T>
Tensor<T> experts_dense(const TensorView<const T>& x, const TensorView<const T>& dispatch,
                        const TensorView<const T>& combine, const ExpertWeights<T>& w, const ExpertOptions& cfg) {
  const char* op = "experts_dense";
  const detail::ExpertDims d = detail::check_expert_weights(w, cfg, op);
  if (cfg.precision != Precision::fp32)
    detail::raise<value_error>(op, ": the dense oracle computes in full precision (precision fp32)");
  const Shape& ds = dispatch.shape();
  // [<batch>, group, experts, capacity]: the last two dims are experts and capacity.
  if (ds.rank() < 3 || ds[ds.rank() - 2].name != cfg.dims.experts)
    detail::raise<shape_error>(op, ": dispatch ", ds, " is not [<batch>, group, ", cfg.dims.experts, ", capacity]");
  const Dim cap = ds[ds.rank() - 1];
  const Shape tokens = ds.without({cfg.dims.experts, cap.name});
  Shape ei_shape = Shape{d.experts};
  for (index_t i = 0; i + 1 < tokens.rank(); ++i) ei_shape = ei_shape.with(tokens[i]);
  const Shape egcm = ei_shape.with(cap).with(d.model);
  const Shape egch = ei_shape.with(cap).with(d.hidden);
  const Tensor<T> expert_inputs = einsum({dispatch, x}, egcm);
  Tensor<T> h = einsum({expert_inputs, w.wi}, egch);
  if (w.bi) h = h + *w.bi;
  if (w.wi_gate) {
    Tensor<T> g = einsum({expert_inputs, *w.wi_gate}, egch);
    if (w.bi_gate) g = g + *w.bi_gate;
    detail::apply_activation(cfg.activation, g.data(), g.size());
    h = g * h;
  } else {
    detail::apply_activation(cfg.activation, h.data(), h.size());
  }
  detail::apply_dropout(cfg, h.data(), h.size(), 0);
  Tensor<T> y = einsum({h, w.wo}, egcm);
  if (w.bo) y = y + *w.bo;
  return einsum({combine, y}, tokens.with(d.model));
}

/// Expert weights laid out once for the kernels, in opt.precision on
/// opt.backend (kernels/matrix_bank.hpp): the form a layer keeps. Built from
/// float, double or bfloat16 weights in any dim order; non-finite weights
/// are a value_error. Immutable, so concurrent calls share it.
template <class T>
class PackedExperts {
 public:
  PackedExperts() = default;
  template <class S>
  PackedExperts(const ExpertWeights<S>& w, const ExpertOptions& opt) : opt_(opt) {
    const char* op = "expert weights";
    const detail::ExpertDims d = detail::check_expert_weights(w, opt, op);
    experts_ = d.experts, model_ = d.model, hidden_ = d.hidden;
    const MoEDims& n = opt.dims;
    k_.up = MatrixBank<T>(w.wi, n.experts, n.model, n.hidden, opt.precision, opt.backend, "wi");
    if (w.wi_gate)
      k_.gate = MatrixBank<T>(*w.wi_gate, n.experts, n.model, n.hidden, opt.precision, opt.backend, "wi_gate");
    k_.down = MatrixBank<T>(w.wo, n.experts, n.hidden, n.model, opt.precision, opt.backend, "wo");
    k_.b_up = detail::flat_bias<T>(w.bi, d.experts, d.hidden, "bi");
    k_.b_gate = detail::flat_bias<T>(w.bi_gate, d.experts, d.hidden, "bi_gate");
    k_.b_down = detail::flat_bias<T>(w.bo, d.experts, d.model, "bo");
    k_.activation = opt.activation;
  }

  const FfnKernel<T>& kernel() const { return k_; }
  const ExpertOptions& options() const { return opt_; }
  const Dim& experts() const { return experts_; }
  const Dim& model() const { return model_; }
  const Dim& hidden() const { return hidden_; }
  bool gated() const { return k_.gated(); }
  /// Bytes of laid-out weights.
  /// Never throws.
  std::size_t bytes() const { return k_.bytes(); }

 private:
  FfnKernel<T> k_;
  ExpertOptions opt_;
  Dim experts_, model_, hidden_;
};

namespace detail {
/// The buffers behind an ExpertWorkspace.
template <class T>
struct ExpertBuffers {
  struct Item {
    index_t expert, row, rows;  // rows [row, row + rows) of the expert-sorted row list
  };
  struct PerThread {
    FfnScratch<T> ffn;
    AlignedVector<T> x;  // the block's gathered rows
  };
  AlignedVector<T> y;  // expert outputs, one row per routed choice [R, model]
  std::vector<index_t> offset, row_token, row_first_hidden, entry_row;
  std::vector<Item> items;
  std::vector<PerThread> threads;
  std::vector<DecodeCall> decode_calls;       // the split decode path (float, oneDNN)
  std::vector<FfnScratch<T>> decode_scratch;  // one per call
};

/// Grows every thread's buffers to the largest any thread has (see
/// prepare_thread_scratch).
template <class PerThread>
void prepare_per_thread(std::vector<PerThread>& threads) {
  equalize_buffers(
      threads, [](PerThread & t) -> auto& { return t.x; });
  decltype(PerThread::ffn)::each_member([&](auto member) {
    equalize_buffers(
        threads, [member](PerThread & t) -> auto& { return t.ffn.*member; });
  });
}

/// Reaches the buffers of the workspaces (whose members are private).
struct WorkspaceAccess {
  template <class W>
  static auto& of(W& w) {
    return w.buf_;
  }
};
}  // namespace detail

/// Scratch memory of experts_sparse_into, reused across calls (buffers only
/// grow), so that a steady-state forward pass allocates nothing. Not for
/// concurrent use: one workspace per calling thread.
template <class T>
class ExpertWorkspace {
  friend struct detail::WorkspaceAccess;
  detail::ExpertBuffers<T> buf_;
};

namespace detail {

/// Sorts the plan's kept, nonzero-weight choices into rows per expert, in
/// (group, slot) order: offset [E + 1], row_token, row_first_hidden (dropout
/// index), entry_row (row of each plan entry, -1 if none).
template <class T>
void expert_rows(const RoutingPlan<T>& plan, index_t H, ExpertBuffers<T>& ws) {
  const index_t G = plan.groups(), E = plan.experts.size, C = plan.capacity.size, K = plan.k;
  auto& offset = ws.offset;
  offset.assign(uz(E + 1), 0);
  for (index_t e = 0; e < E; ++e) {
    index_t n = 0;
    for (index_t g = 0; g < G; ++g)
      for (index_t c = 0; c < plan.taken[uz(g * E + e)]; ++c) {
        const index_t entry = plan.slot_entry[uz(plan.slot_index(g, e, c))];
        n += plan.weight[uz(entry)] != T(0) ? 1 : 0;
      }
    offset[uz(e + 1)] = offset[uz(e)] + n;
  }
  const index_t R = offset[uz(E)];
  ws.row_token.resize(uz(R));
  ws.row_first_hidden.resize(uz(R));
  ws.entry_row.assign(plan.expert.size(), -1);
  for (index_t e = 0; e < E; ++e) {
    index_t r = offset[uz(e)];
    for (index_t g = 0; g < G; ++g)
      for (index_t c = 0; c < plan.taken[uz(g * E + e)]; ++c) {
        const index_t entry = plan.slot_entry[uz(plan.slot_index(g, e, c))];
        if (plan.weight[uz(entry)] == T(0)) continue;
        ws.row_token[uz(r)] = entry / K;
        // (a counter for dropout's draws: wraps, never overflows)
        ws.row_first_hidden[uz(r)] = static_cast<index_t>(
            ((static_cast<std::uint64_t>(e) * static_cast<std::uint64_t>(G) + static_cast<std::uint64_t>(g)) *
                 static_cast<std::uint64_t>(C) +
             static_cast<std::uint64_t>(c)) *
            static_cast<std::uint64_t>(H));
        ws.entry_row[uz(entry)] = r++;
      }
  }
}

/// Whether run_expert_rows takes the split decode path: oneDNN's layout,
/// no dropout, every item a few rows for the decode kernels.
inline bool decode_split_applies(const FfnKernel<float>& k, const ExpertOptions& o, const ExpertBuffers<float>& ws) {
  if (k.backend() != Backend::dnnl || o.dropout > 0.0 || ws.items.empty()) return false;
  for (const auto& it : ws.items)
    if (!decode_path(k, it.rows)) return false;
  return true;
}

/// Runs every expert on its rows (x_rows(token) gives a token's input row):
/// fixed blocks of kernel.row_block() rows per expert, spread over the
/// threads (a decode step's few-row experts: each expert's projections cut
/// by panels over the threads instead). ws.y [R, model] receives the
/// outputs.
template <class T, class RowOf>
void run_expert_rows(const FfnKernel<T>& k, const ExpertOptions& o, ExpertBuffers<T>& ws, RowOf&& x_row,
                     std::optional<std::uint64_t> seed = std::nullopt) {
  const std::uint64_t dropout_seed = seed.value_or(o.dropout_seed);
  const index_t E = k.experts(), M = k.model(), block = k.row_block();
  const index_t R = ws.offset[uz(E)];
  ws.y.resize(uz(mul_size(R, M, "expert outputs")));
  ws.items.clear();
  for (index_t e = 0; e < E; ++e)
    for (index_t r = ws.offset[uz(e)]; r < ws.offset[uz(e + 1)]; r += block)
      ws.items.push_back({e, r, std::min(block, ws.offset[uz(e + 1)] - r)});
  const int nt = std::max(1, num_threads());
  // an item's rows, gathered into xb [rows, model]
  auto gather = [&](const typename ExpertBuffers<T>::Item& it, T* xb) {
    for (index_t j = 0; j < it.rows; ++j) {
      const T* src = x_row(ws.row_token[uz(it.row + j)]);
      std::copy(src, src + M, xb + j * M);
    }
    return static_cast<const T*>(xb);
  };
  if constexpr (std::is_same<T, float>::value) {
    // A decode step: every expert has a few rows (one item each), so threads
    // taking whole experts would wait on the one with the most weights to
    // read. Instead each expert's projections are cut by panels over all
    // threads; every row's result is the same bits either way.
    if (nt > 1 && decode_split_applies(k, o, ws)) {
      ws.decode_calls.clear();
      for (const auto& it : ws.items) ws.decode_calls.push_back({it.expert, it.rows, ws.y.data() + it.row * M});
      ffn_decode_split(k, ws.decode_calls, nt, ws.decode_scratch, [&](index_t i, FfnScratch<T>& s) {
        const auto& it = ws.items[uz(i)];
        return gather(it, FfnScratch<T>::get(s.xa, it.rows * M));
      });
      return;
    }
  }
  if (static_cast<int>(ws.threads.size()) < nt) ws.threads.resize(uz(nt));
  prepare_per_thread(ws.threads);
  parallel_items(static_cast<index_t>(ws.items.size()), [&](index_t i) {
    const auto& it = ws.items[uz(i)];
    auto& t = ws.threads[uz(thread_index())];
    const T* xb = gather(it, FfnScratch<T>::get(t.x, it.rows * M));
    HiddenDropout drop{o.dropout, dropout_seed, ws.row_first_hidden.data() + it.row};
    ffn_rows(k, it.expert, xb, it.rows, ws.y.data() + it.row * M, t.ffn, o.dropout > 0.0 ? &drop : nullptr);
  });
}

/// out[t] = sum over t's kept choices j (in choice order) of weight * y[row].
template <class T>
void combine_rows(const RoutingPlan<T>& plan, const ExpertBuffers<T>& ws, index_t M, T* out) {
  const index_t tokens = plan.tokens(), K = plan.k;
  const index_t* entry_row = ws.entry_row.data();
  const T* Y = ws.y.data();
  // (a few tokens, as in decoding, are not worth waking the other threads)
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (tokens * M >= (index_t{1} << 16))
#endif
  for (index_t t = 0; t < tokens; ++t) {
    T* o = out + t * M;
    bool first = true;
    for (index_t j = 0; j < K; ++j) {
      const index_t r = entry_row[t * K + j];
      if (r < 0) continue;
      const T wgt = plan.weight[uz(t * K + j)];
      const T* yr = Y + r * M;
      if (first) {
        for (index_t m = 0; m < M; ++m) o[m] = T(0) + wgt * yr[m];  // 0 + w*y, as the sum from zero gives
      } else {
        for (index_t m = 0; m < M; ++m) o[m] += wgt * yr[m];
      }
      first = false;
    }
    if (first) std::fill(o, o + M, T(0));
  }
}

}  // namespace detail

/// Fast experts into `out`: x [<batch>, group, model] routed by `plan` ->
/// out [<batch>, group, model]. `out` is reused when it holds that many
/// elements (it is relabelled to the shape, not reallocated). Only filled
/// rows are computed. `dropout_seed` replaces the options' dropout seed
/// for this call (a layer passes its per-call seed). Throws shape_error when
/// x, the plan and the weights disagree on a dim.
template <class T>
void experts_sparse_into(Tensor<T>& out, const TensorView<const T>& x_in, const RoutingPlan<T>& plan,
                         const PackedExperts<T>& pe, ExpertWorkspace<T>& workspace,
                         std::optional<std::uint64_t> dropout_seed = std::nullopt) {
  const char* op = "experts_sparse";
  auto& ws = detail::WorkspaceAccess::of(workspace);
  if (pe.experts().size != plan.experts.size)
    detail::raise<shape_error>(op, ": dim \"", pe.experts().name, "\" has size ", pe.experts().size,
                               " in the weights but ", plan.experts.size, " in the routing plan");
  const Shape xs = plan.batch.with(plan.group).with(pe.model());
  if (x_in.rank() != xs.rank() || !x_in.shape().is_subset_of(xs))
    detail::raise<shape_error>(op, ": inputs ", x_in.shape(), " do not match ", xs);
  Tensor<T> x_hold;
  const TensorView<const T> x = detail::in_order(x_in, xs, x_hold);
  const index_t M = pe.model().size;
  detail::expert_rows(plan, pe.hidden().size, ws);
  const T* px = x.data();
  detail::run_expert_rows(
      pe.kernel(), pe.options(), ws, [&](index_t t) { return px + t * M; }, dropout_seed);
  out.resize(xs);
  detail::combine_rows(plan, ws, M, out.data());
}

/// Fast experts: x [<batch>, group, model] routed by `plan` ->
/// [<batch>, group, model]. Throws as experts_sparse_into.
template <class T>
Tensor<T> experts_sparse(const TensorView<const T>& x, const RoutingPlan<T>& plan, const PackedExperts<T>& pe) {
  ExpertWorkspace<T> ws;
  Tensor<T> out(Shape(), uninitialized);
  experts_sparse_into(out, x, plan, pe, ws);
  return out;
}

/// The same from unpacked weights (lays them out for this one call; keep a
/// PackedExperts, or an MoELayer, for repeated calls): x [<batch>, group,
/// model] routed by `plan` -> [<batch>, group, model]. Throws as
/// PackedExperts' constructor and experts_sparse_into.
template <class T>
Tensor<T> experts_sparse(const TensorView<const T>& x, const RoutingPlan<T>& plan, const ExpertWeights<T>& w,
                         const ExpertOptions& opt) {
  return experts_sparse(x, plan, PackedExperts<T>(w, opt));
}

}  // namespace einmoe
