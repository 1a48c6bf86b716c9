// einmoe/moe/moe_layer.hpp - the MoE feed-forward layer: router logits,
// gating, dispatch, experts, combine.
//
// Example:
//   Top2Options gating;
//   gating.capacity = CapacitySpec::fixed(160);
//   MoEOptions opt;
//   opt.router = gating;                         // or TopKOptions, ExpertChoiceOptions
//   opt.precision = Precision::bf16;             // expert weights (default fp32)
//   MoELayer<float> layer(weights, opt);         // wg [model, experts], wi, wo (+ wi_gate, bi, bo)
//   MoEResult<float> out = layer.forward(x);     // x [batch, group, model]
//   Tensor<float> y = out.outputs;               // [batch, group, model]
//   double aux = out.aux_loss;                   // balancing loss
//   RoutingStats stats = out.stats;              // per-expert load, dropped fractions
//
// Inputs are [<batch dims>, group, model] (dims named by the options). Inputs
// without the group dim, e.g. [batch, length, model], are flattened to
// tokens and split into groups of at most `max_group_size` with Mesh TF's
// rule (no copy when the model dim is last); the outputs come back in the
// input's shape.
//
// Building the layer lays the weights out once (kernels/matrix_bank.hpp): in
// the expert precision, in the backend's packed layout, validated finite.
// The weights are read-only views; the layer keeps none of them, so they may
// be freed afterwards (the dense oracle keeps its own copy). The router stays in the layer's float
// type, so routing does not depend on the expert precision.
//
// Outputs, losses and routing are bitwise the same on any number of threads:
// the router's logits are computed in fixed blocks of rows within each group,
// the experts in fixed blocks of rows per expert, each block by a
// single-threaded kernel, and every sum runs in a fixed order.
//
// Capacity: each router's options hold a CapacitySpec (routers/capacity.hpp):
// top-2 sizes C from a factor of 1.25 by Mesh TF's rule for the group size
// of each call, top-k is dropless, expert choice uses a factor of 2.
//
// Random draws (top-2 policies random and sampling, dropout) are fresh on
// every call and reproducible: call n draws from Rng::call_seed(seed, n);
// call 0 equals the stateless moe_forward. set_calls(n) replays call n.
//
// Routers (opt.router, a RouterOptions): Top2Options (the default; Mesh TF /
// GShard top-2 gating), TopKOptions (Switch, Mixtral, Qwen, DeepSeek-V3,
// DeepSpeed) or ExpertChoiceOptions. Every dim name comes from opt.dims.
//
// Shared experts (weights.shared): one more FFN with its own hidden size,
// applied to every token and added to the routed output, optionally scaled
// per token by sigmoid(x . gate) (Qwen2-MoE's shared_expert_gate):
//   y = routed(x) + sigmoid(x . gate) * shared(x)
//
// The fast path (default) routes with a sparse plan and runs each expert's
// GEMMs over its filled rows only; `dense = true` runs the sources' one-hot
// einsums instead (the oracle: full precision, same logits, far slower; the
// layer then keeps a copy of the weights).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>

#include "einmoe/detail/ffn_rows.hpp"
#include "einmoe/experts/experts.hpp"
#include "einmoe/experts/shared_expert.hpp"
#include "einmoe/kernels/ffn.hpp"
#include "einmoe/kernels/matrix_bank.hpp"
#include "einmoe/moe/moe_options.hpp"
#include "einmoe/routers/capacity.hpp"
#include "einmoe/routers/route.hpp"
#include "einmoe/training/moe_backward.hpp"

namespace einmoe {

namespace detail {

/// The inputs as x [<batch>, group, model], the order the logits and the
/// experts work in: a view of the caller's tensor (relabelled when the
/// inputs have no group dim and are split into groups), or a transposed
/// copy in `hold` only when the model dim is not last or, in grouped inputs,
/// the group dim is not next to last.
template <class T>
struct GroupedInputs {
  TensorView<const T> x;  // [<batch>, group, model]
  Tensor<T> hold;         // the transposed copy, when one was needed
  Shape flat;             // ungrouped inputs: their token dims, then the model dim
  bool regrouped = false;
};

/// [<batch>, group, model] of grouped inputs `s` (shape_error naming op).
inline Shape canonical_shape(const Shape& s, const MoEDims& d, const char* op) {
  return s.without_dim(d.group).without_dim(d.model).with(s.get(d.group, op)).with(s.get(d.model, op));
}

template <class T>
void group_inputs(GroupedInputs<T>& g, const TensorView<const T>& inputs, const MoEOptions& opt) {
  const char* op = "moe_forward";
  const MoEDims& d = opt.dims;
  inputs.shape().require(d.model, op);
  if (inputs.shape().has(d.group)) {
    g.regrouped = false;
    g.x = in_order(inputs, canonical_shape(inputs.shape(), d, op), g.hold);
    return;
  }
  const Shape rest = inputs.shape().without_dim(d.model);
  const index_t n = rest.num_elements();
  if (n == 0) raise<shape_error>(op, ": inputs ", inputs.shape(), " hold no tokens");
  const GroupSplit split = split_into_groups(n, opt.max_group_size);
  const Dim model = inputs.dim(d.model);
  g.flat = rest.with(model);
  g.x = reshape(in_order(inputs, g.flat, g.hold),
                Shape{{"moe_groups", split.num_groups}, {d.group, split.group_size}, model});
  g.regrouped = true;
}

/// The layer's outputs [<batch>, group, model] back in the inputs' layout
/// (a relabel, unless the inputs were transposed on the way in).
template <class T>
void ungroup_outputs(Tensor<T>& out, const GroupedInputs<T>& g, const Shape& inputs) {
  if (g.regrouped) out.set_shape(g.flat);
  if (out.shape() != inputs) out = transpose(std::move(out), inputs);
}

/// Top-2's optional per-token inputs, given in the caller's token dims, in
/// the layout of the grouped inputs (views; copies only when regrouping
/// needs a transpose).
template <class T>
const GatingInputs<T>& regroup_extras(const GatingInputs<T>& in, const GroupedInputs<T>& g, const Dim& experts,
                                      GatingInputs<T>& out, Tensor<T> (&hold)[3]) {
  if (!g.regrouped || in.empty()) return in;
  auto one = [&](const std::optional<TensorView<const T>>& t, bool per_expert, Tensor<T>& h, const char* what) {
    std::optional<TensorView<const T>> r;
    if (!t) return r;
    Shape want = g.flat.without_dim(g.flat[g.flat.rank() - 1].name);
    Shape grouped{g.x.shape()[0], g.x.shape()[1]};
    if (per_expert) want = want.with(experts), grouped = grouped.with(experts);
    if (t->rank() != want.rank() || !t->shape().is_subset_of(want))
      raise<shape_error>("moe_forward: ", what, " ", t->shape(), " does not match the inputs' tokens ", want);
    r = reshape(in_order(*t, want, h), grouped);
    return r;
  };
  out.importance = one(in.importance, false, hold[0], "importance");
  out.uniform = one(in.uniform, false, hold[1], "uniform draws");
  out.gumbel = one(in.gumbel, true, hold[2], "gumbel draws");
  return out;
}

/// logits [<batch>, group, experts] = x [<batch>, group, model] . router,
/// in fixed blocks of rows that never straddle groups (so a group's logits
/// do not depend on the other groups, or on the thread count).
template <class T>
void router_logits_into(const MatrixBank<T>& router, const TensorView<const T>& x, const MoEDims& dims,
                        const Dim& model, const Dim& experts, Tensor<T>& logits, std::vector<FfnScratch<T>>& scratch) {
  if (x.dim(dims.model) != model)
    raise<shape_error>("moe_forward: dim \"", dims.model, "\" has size ", x.size_of(dims.model), " in the inputs but ",
                       model.size, " in the weights");
  logits.resize(x.shape().without_dim(dims.model).with(experts));
  const index_t S = x.size_of(dims.group);
  const index_t groups = S > 0 && experts.size > 0 ? logits.size() / experts.size / S : 0;
  const index_t block = FfnKernel<T>::row_block_of(router.backend());
  const index_t per_group = S > 0 ? (S + block - 1) / block : 0;
  const index_t M = model.size, E = experts.size;
  prepare_thread_scratch(scratch, num_threads());
  const T* px = x.data();
  T* pl = logits.data();
  parallel_items(groups * per_group, [&](index_t i) {
    const index_t g = i / per_group, r0 = (i % per_group) * block, m = std::min(block, S - r0);
    const index_t t0 = g * S + r0;
    linear_rows(router, 0, px + t0 * M, m, pl + t0 * E, scratch[uz(thread_index())]);
  });
}

/// What a layer's router stage works in: the grouped inputs, the logits,
/// the routing and their scratch (reused across calls).
template <class T>
struct RouteStage {
  GroupedInputs<T> in;
  Tensor<T> logits;
  std::vector<FfnScratch<T>> scratch;
  RouterResult<T> routed;
  RouterWorkspace<T> router;
  GatingInputs<T> extras;
  Tensor<T> extra_hold[3];
};

/// The router's weights and the dims they fix: what the layers share.
template <class T>
struct RouterBank {
  MatrixBank<T> bank;
  Dim experts, model;

  /// Lays out wg [model, experts]; shape_error naming wg.
  template <class S>
  RouterBank(const TensorView<const S>& wg, const MoEOptions& opt, const char* op) {
    const MoEDims& d = opt.dims;
    wg.shape().require(d.model, op);
    experts = wg.shape().get(d.experts, op);
    model = wg.shape().get(d.model, op);
    if (wg.rank() != 2) raise<shape_error>(op, ": wg ", wg.shape(), " is not [", d.model, ", ", d.experts, "]");
    bank = MatrixBank<T>(wg, "", d.model, d.experts, Precision::fp32, opt.backend, "wg");
  }
  RouterBank() = default;

  /// Groups the inputs and computes the logits (stage.in, stage.logits).
  void logits_of(RouteStage<T>& st, const TensorView<const T>& inputs, const MoEOptions& opt) const {
    group_inputs(st.in, inputs, opt);
    router_logits_into(bank, st.in.x, opt.dims, model, experts, st.logits, st.scratch);
  }
  /// The whole router stage: logits, then the routing into stage.routed
  /// (`call` says which draws; `extras` are top-2's per-token inputs).
  void route(RouteStage<T>& st, const TensorView<const T>& inputs, const GatingInputs<T>& extras, const MoEOptions& opt,
             const RouteCall& call) const {
    logits_of(st, inputs, opt);
    const GatingInputs<T>& ex = regroup_extras(extras, st.in, experts, st.extras, st.extra_hold);
    route_into(st.routed, st.logits, opt.router, ex, opt.dims, call, st.router);
  }
};

/// The dense oracle's own copy of the weights (the layer keeps it; the
/// caller's views may go away).
template <class T>
struct OwnedWeights {
  std::vector<Tensor<T>> tensors;
  MoEWeights<T> views;
  explicit OwnedWeights(const MoEWeights<T>& w) {
    tensors.reserve(12);
    auto own = [&](const TensorView<const T>& v) {
      tensors.push_back(v.copy());
      return TensorView<const T>(tensors.back());
    };
    auto own_opt = [&](const std::optional<TensorView<const T>>& v) {
      return v ? std::optional<TensorView<const T>>(own(*v)) : std::nullopt;
    };
    views.wg = own(w.wg);
    views.experts = {own(w.experts.wi),     own(w.experts.wo),          own_opt(w.experts.wi_gate),
                     own_opt(w.experts.bi), own_opt(w.experts.bi_gate), own_opt(w.experts.bo)};
    if (w.shared)
      views.shared = SharedExpertWeights<T>{own(w.shared->wi), own(w.shared->wo), own_opt(w.shared->wi_gate),
                                            own_opt(w.shared->gate)};
  }
};

}  // namespace detail

template <class T>
class MoELayer;

/// One MoE layer forward pass: inputs [<batch>, group, model] (or
/// ungrouped [<tokens...>, model]) -> outputs of the same shape, losses and
/// statistics. Defined below. Throws as MoELayer's constructor and
/// forward_into.
template <class T>
MoEResult<T> moe_forward(const TensorView<const T>& inputs, const MoEWeights<T>& w, const MoEOptions& opt,
                         const GatingInputs<T>& extras = {});

/// A layer object holding its laid-out weights, options and scratch memory.
///
/// forward_into reuses the output's buffers and the layer's workspace, so a
/// steady-state forward pass allocates nothing. Concurrent calls on one
/// layer are safe: a call that finds the workspace busy uses a fresh one.
/// Movable, not copyable (the workspace sits behind a pointer).
template <class T>
class MoELayer {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "MoELayer<float or double>");

 public:
  /// Lays out the weights (float, double or bfloat16 views; see the file
  /// comment). Throws shape_error naming the weight and dim that disagree,
  /// value_error for bad options or non-finite weights.
  template <class S>
  MoELayer(const MoEWeights<S>& w, MoEOptions options) : MoELayer(w, std::move(options), true) {}

  /// inputs [<batch>, group, model] (or ungrouped) -> outputs of the same
  /// shape. Throws as forward_into.
  MoEResult<T> forward(const TensorView<const T>& inputs, const GatingInputs<T>& extras = {}) const {
    MoEResult<T> out;
    forward_into(out, inputs, extras);
    return out;
  }

  /// forward into `out`, reusing its buffers: inputs as forward's
  /// ([<batch>, group, model] or [<batch>, ..., model]); out.outputs gets the
  /// inputs' shape.
  ///
  /// Random draws (top-2 policies random and sampling, dropout) are fresh on
  /// every call and reproducible: call n (counting from 0) draws from
  /// Rng::call_seed(seed, n), so the first call equals the stateless
  /// functions with the options' seeds. Draws passed in `extras` win.
  /// Throws shape_error for inputs whose dims disagree with the weights,
  /// value_error for bad logits or extras the router does not take.
  void forward_into(MoEResult<T>& out, const TensorView<const T>& inputs, const GatingInputs<T>& extras = {}) const {
    const std::uint64_t call = state_->calls.fetch_add(1);
    std::unique_lock<std::mutex> lock(state_->mutex, std::try_to_lock);
    if (lock.owns_lock()) {
      run_with(out, inputs, extras, state_->ws, dense_ ? &dense_->views : nullptr, call);
    } else {
      Workspace ws;
      run_with(out, inputs, extras, ws, dense_ ? &dense_->views : nullptr, call);
    }
  }

  /// A training forward pass: as forward, and keeps in `tape` what
  /// backward needs (training/tape.hpp). The experts run on the layer's
  /// kept weights in its own type (plain GEMMs), so the outputs equal
  /// forward's up to rounding (exactly, for double layers). Counts as a
  /// forward call (its draws are call n's). Throws value_error if the layer
  /// was built without MoEOptions::trainable, else as forward_into.
  MoEResult<T> forward_train(const TensorView<const T>& inputs, MoETape<T>& tape,
                             const GatingInputs<T>& extras = {}) const {
    MoEResult<T> out;
    forward_train_into(out, inputs, tape, extras);
    return out;
  }
  /// forward_train into `out`, reusing its buffers. Throws as forward_train.
  void forward_train_into(MoEResult<T>& out, const TensorView<const T>& inputs, MoETape<T>& tape,
                          const GatingInputs<T>& extras = {}) const;

  /// The backward pass of the forward_train pass held by `tape`: the
  /// gradients of L = <outputs, grad_outputs> + c.aux_loss * aux_loss +
  /// c.z_loss * z_loss with respect to the inputs and every weight, each in
  /// the shape (dims and order) of what it is the gradient of. grad_outputs
  /// has the outputs' shape. Bitwise the same on any number of threads.
  /// The tape is used up. Throws value_error for a tape that holds no
  /// unused pass of this layer, non-finite grad_outputs or coefficients,
  /// shape_error for grad_outputs of another shape; a rejected call leaves
  /// the tape as it was.
  MoEGradients<T> backward(MoETape<T>& tape, const TensorView<const T>& grad_outputs,
                           const LossCoefficients& c = {}) const {
    MoEGradients<T> g;
    backward_into(g, tape, grad_outputs, c);
    return g;
  }
  /// backward into `g`: Accumulate::add adds the weight gradients to g's
  /// (which must hold the weights' shapes, as a previous backward_into
  /// left them) for gradient accumulation; g.inputs is always overwritten.
  /// Throws as backward, and shape_error when adding to gradients of other
  /// shapes.
  void backward_into(MoEGradients<T>& g, MoETape<T>& tape, const TensorView<const T>& grad_outputs,
                     const LossCoefficients& c = {}, Accumulate acc = Accumulate::overwrite) const;

  /// Forward calls made so far: the next call draws from
  /// Rng::call_seed(seed, calls()).
  /// Never throws.
  std::uint64_t calls() const { return state_->calls.load(); }
  /// Makes the next forward call number n (to replay call n, or restart at 0).
  /// Never throws.
  void set_calls(std::uint64_t n) { state_->calls.store(n); }

  /// logits [<batch>, group, experts] = x [<batch>, group, model] . wg, in
  /// fixed row blocks per group (the routing input). Throws shape_error for
  /// inputs that lack the group or model dim or disagree on the model size.
  Tensor<T> router_logits(const TensorView<const T>& x) const {
    detail::RouteStage<T> st;
    x.shape().require(opt_.dims.group, "router_logits");
    router_.logits_of(st, x, opt_);
    return std::move(st.logits);
  }

  const MoEOptions& options() const { return opt_; }
  /// The laid-out experts (empty for a dense layer).
  /// Never throws.
  const PackedExperts<T>& experts() const { return experts_; }
  const Dim& experts_dim() const { return router_.experts; }
  const Dim& model_dim() const { return router_.model; }
  /// The laid-out shared expert (empty when the layer has none, or is dense).
  /// Never throws.
  const SharedExpert<T>& shared_expert() const { return shared_; }
  /// Bytes of laid-out weights (router, experts, shared expert).
  /// Never throws.
  std::size_t weight_bytes() const { return router_.bank.bytes() + experts_.bytes() + shared_.bytes(); }

 private:
  template <class S>
  friend MoEResult<S> moe_forward(const TensorView<const S>&, const MoEWeights<S>&, const MoEOptions&,
                                  const GatingInputs<S>&);

  struct Workspace {
    detail::RouteStage<T> route;
    ExpertWorkspace<T> experts;
    SharedExpertWorkspace<T> shared;
  };
  struct State {
    Workspace ws;
    std::mutex mutex;
    std::atomic<std::uint64_t> calls{0};
  };

  template <class S>
  MoELayer(const MoEWeights<S>& w, MoEOptions options, bool keep_dense)
      : opt_(std::move(options)), router_(w.wg, opt_, "MoELayer"), state_(std::make_unique<State>()) {
    const char* op = "MoELayer";
    const ExpertOptions eo = detail::expert_options(opt_);
    if (opt_.dense) {
      if (opt_.precision != Precision::fp32)
        detail::raise<value_error>(op, ": the dense oracle computes in full precision (precision fp32)");
      if constexpr (std::is_same<S, T>::value) {
        detail::check_expert_weights(w.experts, eo, op);
        if (w.shared) detail::check_shared_weights(*w.shared, router_.model, eo, op);
        if (keep_dense) dense_ = std::make_shared<const detail::OwnedWeights<T>>(w);
      } else {
        detail::raise<value_error>(op, ": the dense oracle needs weights of the layer's own type");
      }
    } else {
      experts_ = PackedExperts<T>(w.experts, eo);
      if (w.shared) {
        ExpertOptions so = eo;
        so.dropout = 0.0;
        shared_ = SharedExpert<T>(*w.shared, router_.model, so);
      }
    }
    check_router_options(opt_.router, router_.experts.size, op);
    check_dims_agree(w.experts.wi.dim(opt_.dims.experts), w.experts.wi.dim(opt_.dims.model), op);
    if (opt_.trainable) {
      if (opt_.precision == Precision::int8)
        detail::raise<value_error>(op, ": int8 expert weights are inference-only (trainable needs fp32 or bf16)");
      if (opt_.dense) detail::raise<value_error>(op, ": the dense oracle has no backward pass (trainable)");
      train_ = std::make_shared<const detail::TrainWeights<T>>(w, opt_);
    }
  }

  void check_dims_agree(const Dim& we, const Dim& wm, const char* op) const {
    const MoEDims& d = opt_.dims;
    if (we != router_.experts)
      detail::raise<shape_error>(op, ": dim \"", d.experts, "\" has size ", router_.experts.size, " in wg but ",
                                 we.size, " in wi");
    if (wm != router_.model)
      detail::raise<shape_error>(op, ": dim \"", d.model, "\" has size ", router_.model.size, " in wg but ", wm.size,
                                 " in wi");
  }

  void run_with(MoEResult<T>& out, const TensorView<const T>& inputs, const GatingInputs<T>& extras, Workspace& ws,
                const MoEWeights<T>* dense, std::uint64_t call) const {
    if (dense) {
      run_dense(out, inputs, extras, ws.route, *dense, call);
    } else {
      router_.route(ws.route, inputs, extras, opt_, RouteCall{call, 0});
      const RouterResult<T>& r = ws.route.routed;
      const TensorView<const T>& x = ws.route.in.x;
      experts_sparse_into(out.outputs, x, r.plan, experts_, ws.experts, Rng::call_seed(opt_.dropout_seed, call));
      // (x and the outputs are [<batch>, group, model], contiguous)
      shared_.add_to(x.data(), x.size() / std::max<index_t>(router_.model.size, 1), out.outputs.data(), ws.shared);
      out.aux_loss = r.aux_loss;
      out.z_loss = r.z_loss;
      out.stats = r.stats;
    }
    detail::ungroup_outputs(out.outputs, ws.route.in, inputs.shape());
  }

  /// The dense oracle: the router's one-hot tensors and the sources' einsums.
  void run_dense(MoEResult<T>& out, const TensorView<const T>& inputs, const GatingInputs<T>& extras,
                 detail::RouteStage<T>& st, const MoEWeights<T>& dense, std::uint64_t call) const {
    router_.logits_of(st, inputs, opt_);
    const GatingInputs<T>& ex = detail::regroup_extras(extras, st.in, router_.experts, st.extras, st.extra_hold);
    DenseRouterResult<T> d =
        route_dense(TensorView<const T>(st.logits), opt_.router, ex, opt_.dims, RouteCall{call, 0});
    ExpertOptions eo = detail::expert_options(opt_);
    eo.dropout_seed = Rng::call_seed(opt_.dropout_seed, call);
    out.outputs = experts_dense(st.in.x, d.dispatch, d.combine, dense.experts, eo);
    if (dense.shared) {
      ExpertOptions so = eo;
      so.dropout = 0.0;
      out.outputs = out.outputs + shared_expert_dense(st.in.x, *dense.shared, so);
    }
    out.aux_loss = d.aux_loss;
    out.z_loss = d.z_loss;
    out.stats = std::move(d.stats);
  }

  void check_backward(const MoETape<T>& tape, const TensorView<const T>& dy, const LossCoefficients& c,
                      const char* op) const;

  MoEOptions opt_;
  std::shared_ptr<const detail::TrainWeights<T>> train_;
  detail::RouterBank<T> router_;
  PackedExperts<T> experts_;
  SharedExpert<T> shared_;
  std::shared_ptr<const detail::OwnedWeights<T>> dense_;
  std::unique_ptr<State> state_;
};

template <class T>
void MoELayer<T>::forward_train_into(MoEResult<T>& out, const TensorView<const T>& inputs, MoETape<T>& tape,
                                     const GatingInputs<T>& extras) const {
  if (!train_) detail::raise<value_error>("MoELayer::forward_train: the layer was built without MoEOptions::trainable");
  const std::uint64_t call = state_->calls.fetch_add(1);
  detail::RouteStage<T> st;
  router_.route(st, inputs, extras, opt_, RouteCall{call, 0});
  auto& d = tape.d_;
  d.ready = false;
  d.layer = state_.get();
  d.inputs = inputs.shape();
  d.x = st.in.x.copy();
  d.logits = std::move(st.logits);
  d.routed = std::move(st.routed);
  d.importance.reset();
  const GatingInputs<T>& ex = detail::regroup_extras(extras, st.in, router_.experts, st.extras, st.extra_hold);
  if (ex.importance) {
    Tensor<T> hold;
    const Shape tokens = d.logits.shape().without_dim(opt_.dims.experts);
    d.importance = detail::in_order(*ex.importance, tokens, hold).copy();
  }
  d.dropout = opt_.dropout;
  d.dropout_seed = Rng::call_seed(opt_.dropout_seed, call);
  d.recompute = opt_.recompute_hidden;
  out.outputs.resize(d.x.shape());
  detail::train_forward_experts(d, *train_, out.outputs.data());
  detail::train_forward_shared(d, *train_, out.outputs.data());
  out.aux_loss = d.routed.aux_loss;
  out.z_loss = d.routed.z_loss;
  out.stats = d.routed.stats;
  detail::ungroup_outputs(out.outputs, st.in, inputs.shape());
  d.ready = true;
}

template <class T>
void MoELayer<T>::check_backward(const MoETape<T>& tape, const TensorView<const T>& dy, const LossCoefficients& c,
                                 const char* op) const {
  const auto& d = tape.d_;
  if (!train_) detail::raise<value_error>(op, ": the layer was built without MoEOptions::trainable");
  if (!d.ready)
    detail::raise<value_error>(op, d.layer ? ": the tape's forward pass was used by a backward pass already"
                                           : ": the tape holds no forward_train pass");
  if (d.layer != state_.get()) detail::raise<value_error>(op, ": the tape was written by another layer");
  if (dy.shape() != d.inputs)
    detail::raise<shape_error>(op, ": grad_outputs ", dy.shape(), " do not match the outputs ", d.inputs);
  for (index_t i = 0; i < dy.size(); ++i)
    if (!std::isfinite(dy[i])) detail::raise<value_error>(op, ": grad_outputs contain ", dy[i], " (element ", i, ")");
  if (!std::isfinite(c.aux_loss) || !std::isfinite(c.z_loss))
    detail::raise<value_error>(op, ": loss coefficients ", c.aux_loss, ", ", c.z_loss, " are not finite");
}

namespace detail {
/// A canonical gradient (values in `kept`'s canonical order) into `out` in
/// the weight's own shape: assigned, or added (shape_error unless out has
/// that shape).
template <class T>
void put_gradient(Tensor<T>& out, const AlignedVector<T>& values, const KeptWeight<T>& kept, Accumulate acc,
                  const char* what) {
  Tensor<T> g(kept.w.shape(), uninitialized);
  std::copy(values.begin(), values.end(), g.data());
  if (g.shape() != kept.shape) g = transpose(std::move(g), kept.shape);
  if (acc == Accumulate::overwrite) {
    out = std::move(g);
    return;
  }
  if (out.shape() != g.shape())
    raise<shape_error>("MoELayer::backward_into: adding the gradient of ", what, " ", g.shape(), " to ", out.shape());
  for (index_t i = 0; i < g.size(); ++i) out[i] += g[i];
}
template <class T>
void put_gradient(std::optional<Tensor<T>>& out, const AlignedVector<T>& values,
                  const std::optional<KeptWeight<T>>& kept, Accumulate acc, const char* what) {
  if (!kept) {
    out.reset();
    return;
  }
  if (!out) {
    if (acc == Accumulate::add) raise<shape_error>("MoELayer::backward_into: no gradient of ", what, " to add to");
    out.emplace();
  }
  put_gradient(*out, values, *kept, acc, what);
}
}  // namespace detail

template <class T>
void MoELayer<T>::backward_into(MoEGradients<T>& g, MoETape<T>& tape, const TensorView<const T>& grad_outputs,
                                const LossCoefficients& c, Accumulate acc) const {
  check_backward(tape, grad_outputs, c, "MoELayer::backward");
  if (acc == Accumulate::add && g.wg.shape() != train_->wg.shape)
    detail::raise<shape_error>("MoELayer::backward_into: adding to gradients of wg ", g.wg.shape(), ", not ",
                               train_->wg.shape);
  detail::GroupedInputs<T> gy;
  detail::group_inputs(gy, grad_outputs, opt_);
  detail::CanonicalGrads<T> cg;
  detail::moe_backward(tape.d_, *train_, opt_.router, gy.x.data(), c, cg);
  tape.d_.ready = false;
  const detail::TrainWeights<T>& w = *train_;
  g.inputs.resize(tape.d_.x.shape());
  std::copy(cg.dx.begin(), cg.dx.end(), g.inputs.data());
  detail::ungroup_outputs(g.inputs, gy, grad_outputs.shape());
  detail::put_gradient(g.wg, cg.wg, w.wg, acc, "wg");
  detail::put_gradient(g.experts.wi, cg.wi, w.wi, acc, "wi");
  detail::put_gradient(g.experts.wo, cg.wo, w.wo, acc, "wo");
  detail::put_gradient(g.experts.wi_gate, cg.wi_gate, w.wi_gate, acc, "wi_gate");
  detail::put_gradient(g.experts.bi, cg.bi, w.bi, acc, "bi");
  detail::put_gradient(g.experts.bi_gate, cg.bi_gate, w.bi_gate, acc, "bi_gate");
  detail::put_gradient(g.experts.bo, cg.bo, w.bo, acc, "bo");
  if (!w.s_wi) {
    g.shared.reset();
    return;
  }
  if (!g.shared) {
    if (acc == Accumulate::add)
      detail::raise<shape_error>("MoELayer::backward_into: no shared expert gradients to add to");
    g.shared.emplace();
  }
  detail::put_gradient(g.shared->wi, cg.s_wi, *w.s_wi, acc, "shared wi");
  detail::put_gradient(g.shared->wo, cg.s_wo, *w.s_wo, acc, "shared wo");
  detail::put_gradient(g.shared->wi_gate, cg.s_wi_gate, w.s_wi_gate, acc, "shared wi_gate");
  detail::put_gradient(g.shared->gate, cg.s_gate, w.s_gate, acc, "shared gate");
}

/// One MoE feed-forward layer forward pass (lays the weights out for this
/// call; keep an MoELayer for repeated calls): inputs [<batch>, group,
/// model] (or ungrouped) -> outputs of the same shape; extras (importance,
/// uniform [<batch>, group], gumbel [<batch>, group, experts]) for router
/// top2. With opt.dense it runs the oracle on the caller's weights without
/// copying them. See the file comment. Throws as MoELayer's constructor and
/// forward_into.
template <class T>
MoEResult<T> moe_forward(const TensorView<const T>& inputs, const MoEWeights<T>& w, const MoEOptions& opt,
                         const GatingInputs<T>& extras) {
  const MoELayer<T> layer(w, opt, false);
  MoEResult<T> out;
  typename MoELayer<T>::Workspace ws;
  layer.run_with(out, inputs, extras, ws, opt.dense ? &w : nullptr, 0);
  return out;
}

}  // namespace einmoe
