// einmoe/training/tape.hpp - what a training forward pass keeps for the
// backward pass (MoETape), and the gradients it returns (MoEGradients).
//
// Example:
//   MoEOptions o;
//   o.trainable = true;                          // the layer keeps its weights for backward
//   MoELayer<float> layer(weights, o);
//   MoETape<float> tape;
//   MoEResult<float> out = layer.forward_train(x, tape);         // x [batch, group, model]
//   MoEGradients<float> g = layer.backward(tape, dy, {0.01, 0.001});   // dy: out.outputs' shape
//   // g.inputs (x's shape), g.wg, g.experts.wi, ... (each its weight's shape and dim order)
//
// A tape holds, per token, its inputs and router logits and the routing;
// per routed row (a kept choice) the expert's pre-activations (hidden, twice
// for gated experts) and its output; per token the shared expert's the
// same. tape.bytes() says how much; docs/gradients.md gives the formula.
// A tape serves one backward pass: a second one, or one on another layer,
// is a value_error.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/ffn_train.hpp"
#include "einmoe/moe/moe_options.hpp"
#include "einmoe/training/router_backward.hpp"

namespace einmoe {

/// Gradients of the experts' weights, each in its weight's shape.
template <class T>
struct ExpertGradients {
  Tensor<T> wi, wo;
  std::optional<Tensor<T>> wi_gate, bi, bi_gate, bo;  ///< present where the weight is
};

/// Gradients of the shared expert's weights, each in its weight's shape.
template <class T>
struct SharedExpertGradients {
  Tensor<T> wi, wo;
  std::optional<Tensor<T>> wi_gate, gate;
};

/// dL/d(inputs) and dL/d(every weight) of a layer, for L = <outputs,
/// grad_outputs> + aux_loss coefficient * aux_loss + z_loss coefficient *
/// z_loss. Each tensor has the shape (dims and their order) of what it is
/// the gradient of.
template <class T>
struct MoEGradients {
  Tensor<T> inputs;
  Tensor<T> wg;
  ExpertGradients<T> experts;
  std::optional<SharedExpertGradients<T>> shared;
};

/// Whether backward_into overwrites the gradients or adds to them (to
/// accumulate over micro-batches).
enum class Accumulate { overwrite, add };

namespace detail {

/// w [any dim order] as a T tensor in the order of `names` (a copy).
template <class T, class S>
Tensor<T> canonical_copy(const TensorView<const S>& w, const std::vector<std::string>& names, const char* what) {
  Shape want;
  for (const auto& n : names) want = want.with(w.shape().get(n, what));
  if (want.rank() != w.rank()) raise<shape_error>(what, ": shape ", w.shape(), " is not ", want);
  Tensor<S> hold;
  const TensorView<const S> v = in_order(w, want, hold);
  Tensor<T> out(want, uninitialized);
  for (index_t i = 0; i < out.size(); ++i) {
    if constexpr (std::is_same<S, bfloat16>::value) out[i] = static_cast<T>(static_cast<float>(v[i]));
    else out[i] = static_cast<T>(v[i]);
  }
  return out;
}

/// One weight kept for training: its canonical copy and the caller's shape.
template <class T>
struct KeptWeight {
  Tensor<T> w;
  Shape shape;  // the caller's dims and order (gradients come back in it)
  template <class S>
  KeptWeight(const TensorView<const S>& v, const std::vector<std::string>& names, const char* what)
      : w(canonical_copy<T>(v, names, what)), shape(v.shape()) {}
  KeptWeight() = default;
  const T* data() const { return w.data(); }
};

/// The layer's weights for its backward pass, in canonical order: wg [model,
/// experts], wi / wi_gate [experts, model, hidden], wo [experts, hidden,
/// model], bi / bi_gate [experts, hidden], bo [experts, model]; the shared
/// expert's wi / wi_gate [model, hidden], wo [hidden, model], gate [model].
template <class T>
struct TrainWeights {
  KeptWeight<T> wg, wi, wo;
  std::optional<KeptWeight<T>> wi_gate, bi, bi_gate, bo;
  std::optional<KeptWeight<T>> s_wi, s_wo, s_wi_gate, s_gate;
  Activation activation = Activation::relu;
  index_t s_hidden = 0;
  bool bf16 = false;  // the expert matrices hold bf16 values (PlainFfn::bf16)
  bool dnnl = false;  // products on oneDNN (PlainFfn::dnnl)

  template <class S>
  TrainWeights(const MoEWeights<S>& w, const MoEOptions& o) : activation(o.activation) {
    const MoEDims& d = o.dims;
    const std::string sh = w.shared ? shared_hidden_name(*w.shared, d) : d.hidden;
    wg = KeptWeight<T>(w.wg, {d.model, d.experts}, "wg");
    wi = KeptWeight<T>(w.experts.wi, {d.experts, d.model, d.hidden}, "wi");
    wo = KeptWeight<T>(w.experts.wo, {d.experts, d.hidden, d.model}, "wo");
    auto opt = [](const auto& v, std::vector<std::string> n, const char* what) {
      return v ? std::optional<KeptWeight<T>>(KeptWeight<T>(*v, n, what)) : std::nullopt;
    };
    wi_gate = opt(w.experts.wi_gate, {d.experts, d.model, d.hidden}, "wi_gate");
    bi = opt(w.experts.bi, {d.experts, d.hidden}, "bi");
    bi_gate = opt(w.experts.bi_gate, {d.experts, d.hidden}, "bi_gate");
    bo = opt(w.experts.bo, {d.experts, d.model}, "bo");
    if (w.shared) {
      s_wi = KeptWeight<T>(w.shared->wi, {d.model, sh}, "shared wi");
      s_wo = KeptWeight<T>(w.shared->wo, {sh, d.model}, "shared wo");
      s_wi_gate = opt(w.shared->wi_gate, {d.model, sh}, "shared wi_gate");
      s_gate = opt(w.shared->gate, {d.model}, "shared gate");
      s_hidden = s_wi->w.shape()[1].size;
    }
    if (o.precision == Precision::bf16) round_matrices();
#if defined(EINMOE_HAS_DNNL)
    dnnl = std::is_same<T, float>::value && o.backend != Backend::eigen;
#endif
  }

  /// bf16 precision: the expert and shared expert matrices rounded to bf16
  /// values once, as the inference layout rounds them (biases, the router
  /// and the shared gate stay in T).
  void round_matrices() {
    bf16 = true;
    auto r = [](KeptWeight<T>& k) {
      for (auto& v : k.w) v = static_cast<T>(static_cast<float>(bfloat16(static_cast<float>(v))));
    };
    for (auto* k : {&wi, &wo}) r(*k);
    for (auto* k : {&wi_gate, &s_wi, &s_wo, &s_wi_gate})
      if (*k) r(**k);
  }

  /// The shared expert's hidden dim: the one of its wi that is not the model dim.
  template <class S>
  static std::string shared_hidden_name(const SharedExpertWeights<S>& s, const MoEDims& d) {
    for (const auto& dim : s.wi.shape())
      if (dim.name != d.model) return dim.name;
    return d.hidden;
  }

  index_t E() const { return wi.w.shape()[0].size; }
  index_t M() const { return wi.w.shape()[1].size; }
  index_t H() const { return wi.w.shape()[2].size; }

  PlainFfn<T> experts() const {
    auto p = [](const std::optional<KeptWeight<T>>& k) { return k ? k->data() : nullptr; };
    return {E(), M(), H(), activation, wi.data(), wo.data(), p(wi_gate), p(bi), p(bi_gate), p(bo), bf16, dnnl};
  }
  PlainFfn<T> shared() const {
    auto p = [](const std::optional<KeptWeight<T>>& k) { return k ? k->data() : nullptr; };
    return {1,       M(),     s_hidden, activation, s_wi->data(), s_wo->data(), p(s_wi_gate),
            nullptr, nullptr, nullptr,  bf16,       dnnl};
  }
};

/// What the training forward keeps (see the file comment).
template <class T>
struct TapeData {
  const void* layer = nullptr;  // the layer that wrote it
  bool ready = false;           // written, and not yet used by a backward pass
  Shape inputs;                 // the caller's inputs' shape
  Tensor<T> x;                  // [<batch>, group, model], the grouped inputs
  Tensor<T> logits;             // [<batch>, group, experts]
  RouterResult<T> routed;
  std::optional<Tensor<T>> importance;  // top-2's, in the logits' token order
  ExpertBuffers<T> rows;                // the routed rows: offset, row_token, entry_row, ... and y [R, model]
  AlignedVector<T> pre_u, pre_g;        // [R, hidden] each (pre_g: gated experts)
  AlignedVector<T> s_pre_u, s_pre_g, s_y,
      s_factor;  // the shared expert: [tokens, hidden] x 2, [tokens, model], [tokens]
  std::uint64_t dropout_seed = 0;
  double dropout = 0.0;
  bool recompute = false;  // pre-activations not kept: backward recomputes them

  std::size_t bytes() const {
    auto b = [](const auto& v) { return v.size() * sizeof(T); };
    return static_cast<std::size_t>(x.size() + logits.size()) * sizeof(T) + routed.plan.bytes() +
           routed.choice.size() * sizeof(std::int32_t) + b(rows.y) + b(pre_u) + b(pre_g) + b(s_pre_u) + b(s_pre_g) +
           b(s_y) + b(s_factor) +
           (rows.offset.size() + rows.row_token.size() + rows.row_first_hidden.size() + rows.entry_row.size()) *
               sizeof(index_t);
  }
};

}  // namespace detail

template <class T>
class MoELayer;

/// What MoELayer::forward_train keeps for MoELayer::backward (see the file
/// comment). Movable; default-constructed empty.
template <class T>
class MoETape {
 public:
  /// Whether the tape holds a forward pass not yet used by a backward pass.
  /// Never throws.
  bool ready() const { return d_.ready; }
  /// Bytes the tape holds.
  /// Never throws.
  std::size_t bytes() const { return d_.bytes(); }
  /// Tokens of the forward pass it holds.
  /// Never throws.
  index_t tokens() const { return d_.routed.plan.tokens(); }

 private:
  friend class MoELayer<T>;
  detail::TapeData<T> d_;
};

}  // namespace einmoe
