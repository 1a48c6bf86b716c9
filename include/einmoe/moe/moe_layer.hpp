// einmoe/moe/moe_layer.hpp - the MoE feed-forward layer: router logits,
// gating, dispatch, experts, combine.
//
// Example:
//   MoEOptions opt;
//   opt.gating.capacity = Dim{"expert_capacity", 160};
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
// The caller's weight tensors are read, never kept, so they may be borrowed
// views and may be freed afterwards. The router stays in the layer's float
// type, so routing does not depend on the expert precision.
//
// Outputs, losses and routing are bitwise the same on any number of threads:
// the router's logits are computed in fixed blocks of rows within each group,
// the experts in fixed blocks of rows per expert, each block by a
// single-threaded kernel, and every sum runs in a fixed order.
//
// Capacity: opt.gating.capacity fixes C; left at size 0 (the default), C
// comes from opt.gating.capacity_factor (1.25) by Mesh TF's rule for the
// group size of each call (routers/gating_options.hpp).
//
// Random draws (top-2 policies random and sampling, dropout) are fresh on
// every call and reproducible: call n draws from Rng::call_seed(seed, n);
// call 0 equals the stateless moe_forward. set_calls(n) replays call n.
//
// Routers (opt.router): top2 (default; Mesh TF / GShard top-2 gating with
// opt.gating), topk (routers/topk.hpp with opt.topk: Switch, Mixtral, Qwen,
// DeepSeek-V3, DeepSpeed) or expert_choice (opt.expert_choice). Every router
// names its dims with opt.gating.group_dim and opt.gating.experts_dim.
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
#include <mutex>
#include <optional>

#include "einmoe/experts/experts.hpp"
#include "einmoe/experts/shared_expert.hpp"
#include "einmoe/kernels/ffn.hpp"
#include "einmoe/kernels/matrix_bank.hpp"
#include "einmoe/routers/capacity.hpp"
#include "einmoe/routers/expert_choice.hpp"
#include "einmoe/routers/top2_gating.hpp"
#include "einmoe/routers/top2_gating_dense.hpp"
#include "einmoe/routers/topk.hpp"
#include "einmoe/routers/topk_dense.hpp"

namespace einmoe {

/// An MoE layer's weights. T is float, double or bfloat16 (checkpoints).
template <class T>
struct MoEWeights {
  Tensor<T> wg;  ///< router weights [model, experts]
  ExpertWeights<T> experts;
  std::optional<SharedExpertWeights<T>> shared;  ///< added to every token's output
};

/// Which router a layer uses.
enum class RouterKind { top2, topk, expert_choice };
inline const char* to_string(RouterKind r) {
  return r == RouterKind::top2 ? "top2" : r == RouterKind::topk ? "topk" : "expert-choice";
}
inline RouterKind parse_router(const std::string& s) {
  for (RouterKind r : {RouterKind::top2, RouterKind::topk, RouterKind::expert_choice})
    if (s == to_string(r)) return r;
  detail::raise<value_error>("unknown router \"", s, "\" (top2, topk, expert-choice)");
}

struct MoEOptions {
  RouterKind router = RouterKind::top2;
  Top2Options gating;                   ///< router top2: capacity, policy, normalize; every router: group/experts dim names
  TopKOptions topk;                     ///< router topk (its dim names must equal gating's)
  ExpertChoiceOptions expert_choice;    ///< router expert_choice (its dim names must equal gating's)
  std::string model_dim = "model";
  std::string hidden_dim = "hidden";
  Activation activation = Activation::relu;
  Precision precision = Precision::fp32;  ///< of the expert weights (kernels/precision.hpp)
  Backend backend = Backend::automatic;   ///< oneDNN or Eigen (kernels/precision.hpp)
  bool dense = false;                   ///< run the dense oracle instead of the sparse fast path
  double dropout = 0.0;                 ///< hidden-layer dropout rate (training-mode parity)
  std::uint64_t dropout_seed = 0;
  index_t max_group_size = 1024;        ///< for inputs without a group dim
};

template <class T>
struct MoEResult {
  Tensor<T> outputs;  ///< inputs' shape
  T aux_loss = T(0);  ///< the router's balancing loss (0 for expert_choice)
  T z_loss = T(0);    ///< mean logsumexp(logits)^2 (routers topk and expert_choice; 0 for top2)
  RoutingStats stats;
};

namespace detail {

inline ExpertOptions expert_options(const MoEOptions& o) {
  ExpertOptions e;
  e.experts_dim = o.gating.experts_dim;
  e.model_dim = o.model_dim;
  e.hidden_dim = o.hidden_dim;
  e.activation = o.activation;
  e.dropout = o.dropout;
  e.dropout_seed = o.dropout_seed;
  e.precision = o.precision;
  e.backend = o.backend;
  return e;
}

/// The inputs as [<batch>, group, model]: the caller's tensor, a relabelled
/// view of it, or (only when the model dim is not last in ungrouped inputs)
/// a transposed copy.
template <class T>
struct GroupedInputs {
  Tensor<T> hold;    // the view or copy, when not the caller's tensor
  Shape flat;        // ungrouped inputs: their token dims, then the model dim
  Shape grouped;     // [moe_groups, group, model] for ungrouped inputs
  bool regrouped = false;
  const Tensor<T>* x = nullptr;
};

template <class T>
void group_inputs(GroupedInputs<T>& g, const Tensor<T>& inputs, const MoEOptions& opt) {
  const std::string& gd = opt.gating.group_dim;
  inputs.shape().require(opt.model_dim, "moe_forward");
  if (inputs.shape().has(gd)) {
    g.regrouped = false;
    g.x = &inputs;
    return;
  }
  const Shape rest = inputs.shape().without({opt.model_dim});
  const index_t n = rest.num_elements();
  if (n == 0) raise<shape_error>("moe_forward: inputs ", inputs.shape(), " hold no tokens");
  const GroupSplit split = split_into_groups(n, opt.max_group_size);
  const Dim model = inputs.dim(opt.model_dim);
  g.flat = rest.with(model);
  g.grouped = Shape{{"moe_groups", split.num_groups}, {gd, split.group_size}, model};
  Tensor<T> order_hold;
  const Tensor<T>& ordered = in_order(inputs, g.flat, order_hold);
  g.hold = &ordered == &inputs ? inputs.view() : std::move(order_hold);
  g.hold.set_shape(g.grouped);
  g.regrouped = true;
  g.x = &g.hold;
}

/// An optional per-token gating input given in the caller's token dims, in
/// the grouped layout.
template <class T>
std::optional<Tensor<T>> regroup_extra(const std::optional<Tensor<T>>& t, const GroupedInputs<T>& g,
                                       const Dim* experts, const char* what) {
  if (!t || !g.regrouped) return t;
  Shape want = g.flat.without({g.flat[g.flat.rank() - 1].name});
  Shape grouped{g.grouped[0], g.grouped[1]};
  if (experts) want = want.with(*experts), grouped = grouped.with(*experts);
  if (t->rank() != want.rank() || !t->shape().is_subset_of(want))
    raise<shape_error>("moe_forward: ", what, " ", t->shape(), " does not match the inputs' tokens ", want);
  Tensor<T> out = transpose(*t, want);
  out.set_shape(grouped);
  return out;
}

/// logits [<batch>, group, experts] = x [<batch>, group, model] . router,
/// in fixed blocks of rows that never straddle groups (so a group's logits
/// do not depend on the other groups, or on the thread count).
template <class T>
void router_logits_into(const MatrixBank<T>& router, const Tensor<T>& x, const MoEOptions& opt, const Dim& model,
                        const Dim& experts, Tensor<T>& logits, std::vector<FfnScratch<T>>& scratch) {
  if (x.dim(opt.model_dim) != model)
    raise<shape_error>("moe_forward: dim \"", opt.model_dim, "\" has size ", x.size_of(opt.model_dim),
                       " in the inputs but ", model.size, " in the weights");
  const Shape ls = x.shape().without({opt.model_dim}).with(experts);
  if (logits.size() != ls.num_elements() || !logits.writable()) logits = Tensor<T>(ls, uninitialized);
  logits.set_shape(ls);
  const index_t S = x.size_of(opt.gating.group_dim);
  const index_t groups = S > 0 && experts.size > 0 ? ls.num_elements() / experts.size / S : 0;
  const index_t block = FfnKernel<T>::row_block_of(router.backend());
  const index_t per_group = S > 0 ? (S + block - 1) / block : 0;
  const index_t M = model.size, E = experts.size;
  if (static_cast<int>(scratch.size()) < num_threads()) scratch.resize(uz(num_threads()));
  const T* px = x.data();
  T* pl = logits.data();
  parallel_items(groups * per_group, [&](index_t i) {
    const index_t g = i / per_group, r0 = (i % per_group) * block, m = std::min(block, S - r0);
    const index_t t0 = g * S + r0;
    linear_rows(router, 0, px + t0 * M, m, pl + t0 * E, scratch[uz(thread_index())]);
  });
}

/// Top-2 options for a layer's call n: the seed of policies random and
/// sampling advanced to Rng::call_seed(seed, n) (draws given as inputs win).
inline const Top2Options& gating_for_call(const Top2Options& g, std::uint64_t call, Top2Options& hold) {
  if (call == 0 || (g.policy != SecondPolicy::random && g.policy != SecondPolicy::sampling)) return g;
  hold = g;
  hold.seed = Rng::call_seed(g.seed, call);
  return hold;
}

/// Routes logits [<batch>, group, experts] with the layer's router; `call`
/// is the layer's call count (what top-2's random draws start from).
template <class T>
RouterResult<T> route_tokens(const Tensor<T>& logits, const MoEOptions& opt, const GatingInputs<T>& extras,
                             std::uint64_t call = 0) {
  if (opt.router == RouterKind::topk) return topk_routing(logits, opt.topk);
  if (opt.router == RouterKind::expert_choice) return expert_choice_routing(logits, opt.expert_choice);
  Top2Options hold;
  auto t = top2_gating(logits, gating_for_call(opt.gating, call, hold), extras);
  RouterResult<T> r;
  r.plan = std::move(t.plan), r.aux_loss = t.aux_loss, r.stats = std::move(t.stats), r.parts = std::move(t.parts);
  return r;
}

/// The routers' losses finished from per-group pieces of `groups` groups of
/// S tokens and E experts (as route_tokens finishes them).
template <class T>
void finish_losses(const MoEOptions& opt, const LossParts<T>& parts, index_t groups, index_t S, index_t E, T& aux, T& z) {
  aux = opt.router == RouterKind::top2   ? (groups * S > 0 ? top2_aux_loss(parts, groups, E) : T(0))
        : opt.router == RouterKind::topk ? topk_aux_loss(parts, groups, E)
                                         : T(0);
  z = opt.router == RouterKind::top2 ? T(0) : z_loss_from_parts(parts, groups * S);
}

}  // namespace detail

/// One MoE layer forward pass: inputs [<batch>, group, model] (or
/// ungrouped [<tokens...>, model]) -> outputs of the same shape, losses and
/// statistics. Defined below.
template <class T>
MoEResult<T> moe_forward(const Tensor<T>& inputs, const MoEWeights<T>& w, const MoEOptions& opt,
                         const GatingInputs<T>& extras = {});

/// A layer object holding its laid-out weights, options and scratch memory.
///
/// forward_into reuses the output's buffers and the layer's workspace, so a
/// steady-state forward pass allocates nothing of the size of the
/// activations. Concurrent calls on one layer are safe: a call that finds
/// the workspace busy uses a fresh one.
template <class T>
class MoELayer {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "MoELayer<float or double>");

 public:
  /// Lays out the weights (float, double or bfloat16 tensors; see the file
  /// comment). Throws shape_error / value_error naming the weight.
  template <class S>
  MoELayer(const MoEWeights<S>& w, MoEOptions options) : MoELayer(w, std::move(options), true) {}

  /// inputs [<batch>, group, model] (or ungrouped) -> outputs of the same shape.
  MoEResult<T> forward(const Tensor<T>& inputs, const GatingInputs<T>& extras = {}) const {
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
  void forward_into(MoEResult<T>& out, const Tensor<T>& inputs, const GatingInputs<T>& extras = {}) const {
    const std::uint64_t call = calls_.fetch_add(1);
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (lock.owns_lock()) {
      run_with(out, inputs, extras, ws_, dense_ ? &*dense_ : nullptr, call);
    } else {
      Workspace ws;
      run_with(out, inputs, extras, ws, dense_ ? &*dense_ : nullptr, call);
    }
  }

  /// Forward calls made so far: the next call draws from
  /// Rng::call_seed(seed, calls()).
  std::uint64_t calls() const { return calls_.load(); }
  /// Makes the next forward call number n (to replay call n, or restart at 0).
  void set_calls(std::uint64_t n) { calls_.store(n); }

  /// logits [<batch>, group, experts] = x [<batch>, group, model] . wg, in
  /// fixed row blocks per group (the routing input).
  Tensor<T> router_logits(const Tensor<T>& x) const {
    Tensor<T> logits;
    std::vector<FfnScratch<T>> scratch;
    compute_logits(x, logits, scratch);
    return logits;
  }

  const MoEOptions& options() const { return opt_; }
  /// The laid-out experts (empty for a dense layer).
  const PackedExperts<T>& experts() const { return experts_; }
  const Dim& experts_dim() const { return experts_dim_; }
  const Dim& model_dim() const { return model_; }
  /// The laid-out shared expert (empty when the layer has none, or is dense).
  const SharedExpert<T>& shared_expert() const { return shared_; }
  /// Bytes of laid-out weights (router, experts, shared expert).
  std::size_t weight_bytes() const { return router_.bytes() + experts_.bytes() + shared_.bytes(); }

 private:
  template <class S>
  friend MoEResult<S> moe_forward(const Tensor<S>&, const MoEWeights<S>&, const MoEOptions&, const GatingInputs<S>&);

  template <class S>
  MoELayer(const MoEWeights<S>& w, MoEOptions options, bool keep_dense) : opt_(std::move(options)) {
    const char* op = "MoELayer";
    const auto& g = opt_.gating;
    w.wg.shape().require(opt_.model_dim, op);
    experts_dim_ = w.wg.shape().get(g.experts_dim, op);
    model_ = w.wg.shape().get(opt_.model_dim, op);
    if (w.wg.rank() != 2) detail::raise<shape_error>(op, ": wg ", w.wg.shape(), " is not [", opt_.model_dim, ", ", g.experts_dim, "]");
    router_ = MatrixBank<T>(w.wg, "", opt_.model_dim, g.experts_dim, Precision::fp32, opt_.backend, "wg");
    const ExpertOptions eo = detail::expert_options(opt_);
    if (opt_.dense) {
      if constexpr (std::is_same<S, T>::value) {
        if (opt_.precision != Precision::fp32)
          detail::raise<value_error>(op, ": the dense oracle computes in full precision (precision fp32)");
        detail::check_expert_weights(w.experts, eo, op);
        if (keep_dense) dense_ = w;
      } else {
        detail::raise<value_error>(op, ": the dense oracle needs weights of the layer's own type");
      }
    } else {
      experts_ = PackedExperts<T>(w.experts, eo);
    }
    if (w.shared) {
      ExpertOptions so = eo;
      so.dropout = 0.0;
      if (opt_.dense) {
        if (opt_.precision != Precision::fp32)
          detail::raise<value_error>(op, ": the dense oracle computes in full precision (precision fp32)");
        detail::check_shared_weights(*w.shared, model_, so, op);
      } else {
        shared_ = SharedExpert<T>(*w.shared, model_, so);
      }
    }
    check_router_options(op);
    const Dim& we = opt_.dense ? w.experts.wi.dim(g.experts_dim) : experts_.experts();
    const Dim& wm = opt_.dense ? w.experts.wi.dim(opt_.model_dim) : experts_.model();
    if (we != experts_dim_)
      detail::raise<shape_error>(op, ": dim \"", g.experts_dim, "\" has size ", experts_dim_.size, " in wg but ",
                                 we.size, " in wi");
    if (wm != model_)
      detail::raise<shape_error>(op, ": dim \"", opt_.model_dim, "\" has size ", model_.size, " in wg but ", wm.size,
                                 " in wi");
  }


  void check_router_options(const char* op) const {
    const auto& g = opt_.gating;
    auto same = [&](const std::string& a, const std::string& b, const char* what) {
      if (a != b)
        detail::raise<value_error>(op, ": ", what, " \"", a, "\" differs from gating.", what + std::string(what).find('.') + 1,
                                   " \"", b, "\" (every router uses the gating dims)");
    };
    if (opt_.router == RouterKind::topk) {
      same(opt_.topk.group_dim, g.group_dim, "topk.group_dim");
      same(opt_.topk.experts_dim, g.experts_dim, "topk.experts_dim");
      detail::check_topk_options(opt_.topk, experts_dim_.size, op);
    } else if (opt_.router == RouterKind::expert_choice) {
      same(opt_.expert_choice.group_dim, g.group_dim, "expert_choice.group_dim");
      same(opt_.expert_choice.experts_dim, g.experts_dim, "expert_choice.experts_dim");
    }
  }

  struct Workspace {
    ExpertWorkspace<T> experts;
    SharedExpertWorkspace<T> shared;
    Tensor<T> logits, canonical;
    std::vector<FfnScratch<T>> router;
    detail::GroupedInputs<T> in;
  };

  /// [<batch>, group, model]: the order the logits and experts work in.
  Shape canonical_shape(const Shape& x) const {
    const std::string& gd = opt_.gating.group_dim;
    return x.without({gd, opt_.model_dim}).with(x.get(gd, "moe_forward")).with(x.get(opt_.model_dim, "moe_forward"));
  }

  void compute_logits(const Tensor<T>& x_any, Tensor<T>& logits, std::vector<FfnScratch<T>>& scratch) const {
    Tensor<T> hold;
    const Tensor<T>& x = in_order(x_any, canonical_shape(x_any.shape()), hold);
    detail::router_logits_into(router_, x, opt_, model_, experts_dim_, logits, scratch);
  }

  void run_with(MoEResult<T>& out, const Tensor<T>& inputs, const GatingInputs<T>& extras_in, Workspace& ws,
                const MoEWeights<T>* dense, std::uint64_t call) const {
    Top2Options hold;
    const Top2Options& g = detail::gating_for_call(opt_.gating, call, hold);
    const std::uint64_t dropout_seed = Rng::call_seed(opt_.dropout_seed, call);
    detail::group_inputs(ws.in, inputs, opt_);
    const Tensor<T>& x = in_order(*ws.in.x, canonical_shape(ws.in.x->shape()), ws.canonical);
    GatingInputs<T> regrouped;
    const GatingInputs<T>* extras = &extras_in;
    if (ws.in.regrouped && (extras_in.importance || extras_in.uniform || extras_in.gumbel)) {
      regrouped.importance = detail::regroup_extra(extras_in.importance, ws.in, nullptr, "importance");
      regrouped.uniform = detail::regroup_extra(extras_in.uniform, ws.in, nullptr, "uniform draws");
      regrouped.gumbel = detail::regroup_extra(extras_in.gumbel, ws.in, &experts_dim_, "gumbel draws");
      extras = &regrouped;
    }
    if (opt_.router != RouterKind::top2 && (extras_in.importance || extras_in.uniform || extras_in.gumbel))
      detail::raise<value_error>("moe_forward: importance, uniform and gumbel inputs belong to router top2, not ",
                                 to_string(opt_.router));
    compute_logits(x, ws.logits, ws.router);
    if (opt_.dense) {
      ExpertOptions eo = detail::expert_options(opt_);
      eo.dropout_seed = dropout_seed;
      struct : DenseRouterResult<T> {
        RoutingStats stats;
      } d;
      if (opt_.router == RouterKind::top2) {
        auto t = top2_gating_dense(ws.logits, g, *extras);
        d.combine = std::move(t.combine), d.dispatch = std::move(t.dispatch), d.aux_loss = t.aux_loss;
        d.stats = std::move(t.stats);
      } else if (opt_.router == RouterKind::topk) {
        static_cast<DenseRouterResult<T>&>(d) = topk_routing_dense(ws.logits, opt_.topk);
        d.stats = topk_routing(ws.logits, opt_.topk).stats;  // (load statistics: the plan's)
      } else {
        static_cast<DenseRouterResult<T>&>(d) = expert_choice_routing_dense(ws.logits, opt_.expert_choice);
        d.stats = expert_choice_routing(ws.logits, opt_.expert_choice).stats;
      }
      out.outputs = experts_dense(x, d.dispatch, d.combine, dense->experts, eo);
      if (dense->shared) {
        ExpertOptions so = eo;
        so.dropout = 0.0;
        out.outputs = out.outputs + shared_expert_dense(x, *dense->shared, so);
      }
      out.aux_loss = d.aux_loss;
      out.z_loss = d.z_loss;
      out.stats = std::move(d.stats);
    } else {
      RouterResult<T> r = detail::route_tokens(ws.logits, opt_, *extras, call);
      experts_sparse_into(out.outputs, x, r.plan, experts_, ws.experts, dropout_seed);
      // (x and the outputs are [<batch>, group, model], contiguous)
      shared_.add_to(x.data(), x.size() / model_.size, out.outputs.data(), ws.shared);
      out.aux_loss = r.aux_loss;
      out.z_loss = r.z_loss;
      out.stats = std::move(r.stats);
    }
    // Back to the inputs' layout (a relabel when the model dim was last).
    if (ws.in.regrouped) {
      out.outputs.set_shape(ws.in.flat);
      if (out.outputs.shape() != inputs.shape()) out.outputs = transpose(std::move(out.outputs), inputs.shape());
    } else if (out.outputs.shape() != inputs.shape()) {
      out.outputs = transpose(std::move(out.outputs), inputs.shape());
    }
  }

  MoEOptions opt_;
  MatrixBank<T> router_;
  PackedExperts<T> experts_;
  SharedExpert<T> shared_;
  std::optional<MoEWeights<T>> dense_;
  Dim experts_dim_, model_;
  mutable Workspace ws_;
  mutable std::mutex mutex_;
  mutable std::atomic<std::uint64_t> calls_{0};
};

/// One MoE feed-forward layer forward pass (lays the weights out for this
/// call; keep an MoELayer for repeated calls): inputs [<batch>, group,
/// model] (or ungrouped) -> outputs of the same shape; extras (importance,
/// uniform [<batch>, group], gumbel [<batch>, group, experts]) for router
/// top2. With opt.dense it runs the oracle on the caller's weights without
/// copying them. See the file comment.
template <class T>
MoEResult<T> moe_forward(const Tensor<T>& inputs, const MoEWeights<T>& w, const MoEOptions& opt,
                         const GatingInputs<T>& extras) {
  const MoELayer<T> layer(w, opt, false);
  MoEResult<T> out;
  typename MoELayer<T>::Workspace ws;
  layer.run_with(out, inputs, extras, ws, opt.dense ? &w : nullptr, 0);
  return out;
}

}  // namespace einmoe
