// einmoe/experts/shared_expert.hpp - an expert every token goes through
// (DeepSeek-V3's shared_experts, Qwen2-MoE's shared_expert).
//
// Example:
//   SharedExpertWeights<float> w;
//   w.wi = wi;                                  // [model, hidden]
//   w.wo = wo;                                  // [hidden, model]
//   w.wi_gate = wig;                            // optional: gated (GLU)
//   w.gate = g;                                 // optional [model]: scale by sigmoid(x . g)
//   SharedExpert<float> s(w, model, opt);       // model: x's feature Dim; laid out once, like PackedExperts
//   SharedExpertWorkspace<float> ws;            // scratch, reused across calls
//   s.add_to(x.data(), tokens, out.data(), ws); // out [tokens, model] += sigmoid(x . g) * FFN(x [tokens, model])
//
// The FFN is the experts' (experts/experts.hpp) with its own hidden size:
//   plain:  y = act(x . wi) . wo
//   gated:  y = (act(x . wi_gate) * (x . wi)) . wo
// in opt.precision on opt.backend (no biases, no dropout: no model in use has
// them). Rows go through the kernels in fixed blocks of row_block() tokens,
// so results do not depend on the thread count.
#pragma once

#include <cmath>
#include <optional>
#include <vector>

#include "einmoe/experts/experts.hpp"
#include "einmoe/kernels/ffn.hpp"
#include "einmoe/ops/einsum.hpp"

namespace einmoe {

/// A shared expert's weights; dims found by name (any order), the hidden
/// size its own. T is float, double or bfloat16.
template <class T>
struct SharedExpertWeights {
  TensorView<const T> wi;                      ///< [model, hidden]
  TensorView<const T> wo;                      ///< [hidden, model]
  std::optional<TensorView<const T>> wi_gate;  ///< [model, hidden]: makes it gated (GLU)
  std::optional<TensorView<const T>> gate;     ///< [model]: output scaled per token by sigmoid(x . gate)
};

namespace detail {
/// The buffers behind a SharedExpertWorkspace.
template <class T>
struct SharedBuffers {
  std::vector<FfnScratch<T>> threads;
  std::vector<AlignedVector<T>> y;  // per thread: one block's outputs
  std::vector<DecodeCall> calls;    // a decode step's block, split over the threads
  std::vector<FfnScratch<T>> decode;
};
}  // namespace detail

/// Scratch memory of SharedExpert::add_to, reused across calls (buffers
/// only grow). One per calling thread.
template <class T>
class SharedExpertWorkspace {
  friend struct detail::WorkspaceAccess;
  detail::SharedBuffers<T> buf_;
};

namespace detail {

/// Checks the shared expert's dims against the layer's model dim; returns
/// its hidden dim. shape_error naming "shared.<tensor>".
template <class S>
Dim check_shared_weights(const SharedExpertWeights<S>& w, const Dim& model, const ExpertOptions& o, const char* op) {
  auto dims2 = [&](const TensorView<const S>& t, const std::string& a, const std::string& b, const char* name) {
    if (t.rank() != 2 || !t.shape().has(a) || !t.shape().has(b))
      raise<shape_error>(op, ": shared.", name, " has shape ", t.shape(), ", expected the dims [", a, ", ", b, "]");
  };
  const std::string &md = o.dims.model, &hd = o.dims.hidden;
  dims2(w.wi, md, hd, "wi");
  dims2(w.wo, hd, md, "wo");
  const Dim hidden = w.wi.dim(hd);
  auto same = [&](const TensorView<const S>& t, const Dim& d, const char* name) {
    if (t.dim(d.name) != d)
      raise<shape_error>(op, ": dim \"", d.name, "\" has size ", t.size_of(d.name), " in shared.", name, " but ",
                         d.size, d.name == model.name ? " in the layer" : " in shared.wi");
  };
  same(w.wi, model, "wi");
  same(w.wo, model, "wo");
  same(w.wo, hidden, "wo");
  if (w.wi_gate) {
    dims2(*w.wi_gate, md, hd, "wi_gate");
    same(*w.wi_gate, model, "wi_gate");
    same(*w.wi_gate, hidden, "wi_gate");
  }
  if (w.gate) {
    if (w.gate->rank() != 1 || !w.gate->shape().has(md))
      raise<shape_error>(op, ": shared.gate has shape ", w.gate->shape(), ", expected [", md, "]");
    same(*w.gate, model, "gate");
  }
  return hidden;
}

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

}  // namespace detail

/// A shared expert laid out once for the kernels (immutable, so concurrent
/// callers share it; each caller brings its own workspace).
template <class T>
class SharedExpert {
 public:
  SharedExpert() = default;
  /// `model` is the layer's model dim; opt gives the dim names, activation,
  /// precision and backend (dropout must be 0). shape_error / value_error
  /// naming "shared.<tensor>".
  template <class S>
  SharedExpert(const SharedExpertWeights<S>& w, const Dim& model, const ExpertOptions& opt) : opt_(opt) {
    const char* op = "shared expert";
    if (opt.dropout != 0.0) detail::raise<value_error>(op, ": no dropout on the shared expert");
    hidden_ = detail::check_shared_weights(w, model, opt, op);
    model_ = model;
    const MoEDims& n = opt.dims;
    k_.up = MatrixBank<T>(w.wi, "", n.model, n.hidden, opt.precision, opt.backend, "shared.wi");
    if (w.wi_gate)
      k_.gate = MatrixBank<T>(*w.wi_gate, "", n.model, n.hidden, opt.precision, opt.backend, "shared.wi_gate");
    k_.down = MatrixBank<T>(w.wo, "", n.hidden, n.model, opt.precision, opt.backend, "shared.wo");
    k_.activation = opt.activation;
    if (w.gate) {
      gate_.resize(detail::uz(model.size));
      for (index_t i = 0; i < model.size; ++i) {
        const double v = static_cast<double>((*w.gate)[i]);
        if (!std::isfinite(v)) detail::raise<value_error>(op, ": shared.gate holds a non-finite value at ", i);
        gate_[detail::uz(i)] = static_cast<T>(v);
      }
    }
  }

  bool empty() const { return k_.up.empty(); }
  bool gated() const { return k_.gated(); }
  bool has_gate() const { return !gate_.empty(); }
  const Dim& model() const { return model_; }
  const Dim& hidden() const { return hidden_; }
  const FfnKernel<T>& kernel() const { return k_; }
  std::size_t bytes() const { return k_.bytes() + gate_.size() * sizeof(T); }

  /// out [tokens, model] += sigmoid(x . gate) * FFN(x) (the factor is 1
  /// without a gate), x [tokens, model]; both row-major, contiguous.
  /// Throws nothing but std::bad_alloc (the workspace grows).
  void add_to(const T* x, index_t tokens, T* out, SharedExpertWorkspace<T>& workspace) const {
    if (empty() || tokens <= 0) return;
    auto& ws = detail::WorkspaceAccess::of(workspace);
    const index_t M = model_.size, block = k_.row_block();
    const index_t items = (tokens + block - 1) / block;
    const int nt = std::max(1, num_threads());
    detail::prepare_thread_scratch(ws.threads, nt);
    if (static_cast<int>(ws.y.size()) < nt) ws.y.resize(detail::uz(nt));
    detail::equalize_buffers(
        ws.y, [](detail::AlignedVector<T> & y) -> auto& { return y; });
    if constexpr (std::is_same<T, float>::value) {
      // A decode step's few tokens are one block: its projections are cut by
      // panels over the threads instead (the same bits as one thread).
      if (nt > 1 && k_.backend() == Backend::dnnl && detail::decode_path(k_, tokens)) {
        T* y = detail::FfnScratch<T>::get(ws.y[0], tokens * M);
        ws.calls.assign(1, detail::DecodeCall{0, tokens, y});
        detail::ffn_decode_split(k_, ws.calls, nt, ws.decode, [&](index_t, detail::FfnScratch<T>&) { return x; });
        add_rows(x, 0, tokens, y, out);
        return;
      }
    }
    detail::parallel_items(items, [&](index_t i) {
      const index_t r0 = i * block, m = std::min(block, tokens - r0);
      const auto t = detail::uz(detail::thread_index());
      T* y = detail::FfnScratch<T>::get(ws.y[t], m * M);
      detail::ffn_rows(k_, 0, x + r0 * M, m, y, ws.threads[t]);
      add_rows(x, r0, m, y, out);
    });
  }

 private:
  /// out[r0 + r] += sigmoid(x[r0 + r] . gate) * y[r] for r < m.
  void add_rows(const T* x, index_t r0, index_t m, const T* y, T* out) const {
    const index_t M = model_.size;
    for (index_t r = 0; r < m; ++r) {
      const T g = has_gate() ? detail::sigmoid(dot(x + (r0 + r) * M)) : T(1);
      T* o = out + (r0 + r) * M;
      const T* yr = y + r * M;
      for (index_t j = 0; j < M; ++j) o[j] += g * yr[j];
    }
  }

  T dot(const T* x) const {
    T z = T(0);
    for (std::size_t j = 0; j < gate_.size(); ++j) z += x[j] * gate_[j];
    return z;
  }

  FfnKernel<T> k_;
  std::vector<T> gate_;
  ExpertOptions opt_;
  Dim model_, hidden_;
};

/// The dense oracle: x [<tokens>, model] -> sigmoid(x . gate) * FFN(x)
/// [<tokens>, model] with einsums, in full precision (opt.precision fp32).
/// Throws shape_error when x and the weights disagree on a dim, value_error unless
/// opt.precision is fp32.
template <class T>
Tensor<T> shared_expert_dense(const TensorView<const T>& x, const SharedExpertWeights<T>& w, const ExpertOptions& opt) {
  const char* op = "shared_expert_dense";
  if (opt.precision != Precision::fp32)
    detail::raise<value_error>(op, ": the dense oracle computes in full precision (precision fp32)");
  const Dim model = x.shape().get(opt.dims.model, op);
  const Dim hidden = detail::check_shared_weights(w, model, opt, op);
  const Shape tokens = x.shape().without({opt.dims.model});
  Tensor<T> h = einsum({x, w.wi}, tokens.with(hidden));
  if (w.wi_gate) {
    Tensor<T> g = einsum({x, *w.wi_gate}, tokens.with(hidden));
    detail::apply_activation(opt.activation, g.data(), g.size());
    h = g * h;
  } else {
    detail::apply_activation(opt.activation, h.data(), h.size());
  }
  Tensor<T> y = einsum({h, w.wo}, tokens.with(model));
  if (w.gate) {
    Tensor<T> z = einsum({x, *w.gate}, tokens);
    for (auto& v : z) v = detail::sigmoid(v);
    y = y * z;
  }
  return y;
}

}  // namespace einmoe
