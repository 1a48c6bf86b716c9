// examples/decoder/tiny_moe_decoder.hpp - a tiny decoder-only transformer with
// MoE feed-forward layers, on built-in random weights, written with einmoe's
// named tensors. Used by examples/moe_decoder.cpp and its test.
//
// Per layer: x += attention(rms_norm(x)) (causal, multi-head); x += moe(rms_norm(x))
// (top-2 gating). Logits = rms_norm(x) . embedding^T (the softmax shares the
// token embedding). As in Mesh TF's decoders, the input at position p is the
// embedding of the token at position p - 1 (at p = 0: the row's start token,
// if any) plus the position embedding of p, and the logits at p predict the
// token at p.
//
// Two ways to run it, which give the same logits:
//   full_logits(ids [rows..., length])          the whole prefix at once, causal mask
//   step_logits(step, ids [rows..., length], kv)  one position, with a KV cache
// The KV cache is 2 * layers tensors [rows..., memory_length, heads, kv] -
// beam-search state. Routing is per token (dropless top-2: capacity = group
// size, so no token is dropped): capacity-limited gating would make a
// token's experts depend on which other tokens share its group, and cached
// decoding could not match the full pass. Each layer keeps its MoELayer,
// whose weights are laid out once, at construction.
#pragma once

#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <einmoe/einmoe.hpp>

namespace tiny {

/// Throws E with the arguments written one after the other.
template <class E, class... A>
[[noreturn]] void fail(const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  throw E(os.str());
}

using namespace einmoe;

struct Config {
  index_t vocab = 32, model = 32, heads = 4, kv = 8, hidden = 64, experts = 4, layers = 2, max_length = 16;
  std::uint64_t seed = 1;
  /// The token "before position 0" of each batch row (a BOS / task token), so
  /// that rows differ; empty: none (zero input at position 0).
  std::vector<std::int64_t> start_tokens;
};

template <class T>
class MoEDecoder {
 public:
  explicit MoEDecoder(Config c)
      : c_(c), load_(static_cast<std::size_t>(c.layers), std::vector<index_t>(static_cast<std::size_t>(c.experts), 0)) {
    Rng rng(c.seed);
    auto init = [&](const Shape& s, double scale) {
      Tensor<T> t = rng.normal<T>(s);
      for (auto& v : t) v = static_cast<T>(static_cast<double>(v) * scale);
      return t;
    };
    const double sm = 1.0 / std::sqrt(static_cast<double>(c.model));
    embedding_ = init(Shape{vocab(), model()}, 0.3);
    positions_ = init(Shape{Dim("length", c.max_length), model()}, 1.0);
    for (auto t : c.start_tokens)
      if (t < 0 || t >= c.vocab) fail<value_error>("tiny decoder: start token ", t, " is not in the vocab");
    for (index_t l = 0; l < c.layers; ++l) {
      Layer L;
      L.wq = init(Shape{model(), heads(), kvd()}, sm);
      L.wk = init(Shape{model(), heads(), kvd()}, sm);
      L.wv = init(Shape{model(), heads(), kvd()}, sm);
      L.wo = init(Shape{heads(), kvd(), model()}, 1.0 / std::sqrt(static_cast<double>(c.heads * c.kv)));
      L.wg = init(Shape{model(), experts()}, sm);
      L.wi = init(Shape{experts(), model(), hidden()}, sm);
      L.wo_experts = init(Shape{experts(), hidden(), model()}, 1.0 / std::sqrt(static_cast<double>(c.hidden)));
      MoEWeights<T> w;
      w.wg = L.wg;
      w.experts.wi = L.wi;
      w.experts.wo = L.wo_experts;
      Top2Options gating;
      gating.capacity = CapacitySpec::dropless();
      MoEOptions o;
      o.router = gating;
      L.moe.emplace(w, o);  // lays the weights out, once
      layers_.push_back(std::move(L));
    }
  }

  const Config& config() const { return c_; }

  /// Logits for every position: ids [rows..., length] -> [rows..., length, vocab].
  Tensor<T> full_logits(const TensorView<const std::int64_t>& ids) {
    const Dim length = ids.shape()[ids.rank() - 1];
    const Shape rows = ids.shape().without({length.name});
    // inputs: token at p - 1 (zero at p = 0) + position p
    Tensor<T> x(rows.with(length).with(model()));
    const index_t R = rows.num_elements(), L = length.size, M = c_.model;
    for (index_t r = 0; r < R; ++r)
      for (index_t p = 0; p < L; ++p)
        add_input(x.data() + (r * L + p) * M, p == 0 ? start_token(r, R) : ids[r * L + p - 1], p);
    const Dim memory("memory_length", L);
    const Tensor<bool> causal = causal_mask(length);
    for (auto& layer : layers_) {
      const Tensor<T> h = rms_norm(x);
      const Tensor<T> q = einsum({h, layer.wq}, rows.with(length).with(heads()).with(kvd()));
      const Tensor<T> k =
          rename(einsum({h, layer.wk}, rows.with(length).with(heads()).with(kvd())), "length", memory.name);
      const Tensor<T> v =
          rename(einsum({h, layer.wv}, rows.with(length).with(heads()).with(kvd())), "length", memory.name);
      x = x + attend(q, k, v, causal, layer);
      x = x + moe(rms_norm(x), rows.with(Dim("group", L)), layer);
    }
    return einsum({rms_norm(x), embedding_}, rows.with(length).with(vocab()));
  }

  /// An empty KV cache for rows [rows...]: 2 * layers tensors
  /// [rows..., memory_length, heads, kv].
  std::vector<Tensor<T>> empty_cache(const Shape& rows) const {
    return std::vector<Tensor<T>>(static_cast<std::size_t>(2 * c_.layers),
                                  Tensor<T>(rows.with(Dim("memory_length", c_.max_length)).with(heads()).with(kvd())));
  }

  /// Logits at position `step` from the tokens before it and the cache:
  /// ids [rows..., length] -> [rows..., vocab]; writes position `step` into the cache.
  Tensor<T> step_logits(index_t step, const TensorView<const std::int64_t>& ids, std::vector<Tensor<T>>& cache) {
    const Dim length = ids.shape()[ids.rank() - 1];
    if (step >= c_.max_length) fail<value_error>("tiny decoder: step ", step, " is past max_length ", c_.max_length);
    const Shape rows = ids.shape().without({length.name});
    const index_t R = rows.num_elements(), L = length.size, M = c_.model;
    Tensor<T> x(rows.with(model()));
    for (index_t r = 0; r < R; ++r)
      add_input(x.data() + r * M, step == 0 ? start_token(r, R) : ids[r * L + step - 1], step);
    Tensor<bool> visible(Shape{Dim("memory_length", c_.max_length)});
    for (index_t j = 0; j <= step; ++j) visible[j] = true;
    const index_t HK = c_.heads * c_.kv;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      auto& layer = layers_[l];
      const Tensor<T> h = rms_norm(x);
      const Tensor<T> q = einsum({h, layer.wq}, rows.with(heads()).with(kvd()));
      const Tensor<T> k = einsum({h, layer.wk}, rows.with(heads()).with(kvd()));
      const Tensor<T> v = einsum({h, layer.wv}, rows.with(heads()).with(kvd()));
      Tensor<T>& kc = cache[2 * l];
      Tensor<T>& vc = cache[2 * l + 1];
      for (index_t r = 0; r < R; ++r) {
        std::copy_n(k.data() + r * HK, HK, kc.data() + (r * c_.max_length + step) * HK);
        std::copy_n(v.data() + r * HK, HK, vc.data() + (r * c_.max_length + step) * HK);
      }
      x = x + attend(q, kc, vc, visible, layer);
      x = x + moe(rms_norm(x), rows.with(Dim("group", 1)), layer);
    }
    return einsum({rms_norm(x), embedding_}, rows.with(vocab()));
  }

  /// Tokens each expert of each layer received since construction or the
  /// last reset.
  const std::vector<std::vector<index_t>>& expert_load() const { return load_; }
  void reset_load() {
    for (auto& l : load_) std::fill(l.begin(), l.end(), 0);
  }

 private:
  struct Layer {
    Tensor<T> wq, wk, wv, wo;
    Tensor<T> wg, wi, wo_experts;    // the MoE block's weights
    std::optional<MoELayer<T>> moe;  // laid out from them
  };
  Dim vocab() const { return Dim("vocab", c_.vocab); }
  Dim model() const { return Dim("model", c_.model); }
  Dim heads() const { return Dim("heads", c_.heads); }
  Dim kvd() const { return Dim("kv", c_.kv); }
  Dim hidden() const { return Dim("hidden", c_.hidden); }
  Dim experts() const { return Dim("experts", c_.experts); }

  /// Row r of R rows belongs to batch row r / (R / batch): rows are
  /// [batch, beam...] or [batch].
  std::int64_t start_token(index_t r, index_t R) const {
    const auto B = static_cast<index_t>(c_.start_tokens.size());
    if (B == 0) return -1;
    if (R % B != 0) fail<shape_error>("tiny decoder: ", R, " rows for ", B, " start tokens");
    return c_.start_tokens[static_cast<std::size_t>(r / (R / B))];
  }

  void add_input(T* dst, std::int64_t token, index_t position) const {
    const index_t M = c_.model;
    if (position >= c_.max_length) fail<value_error>("tiny decoder: position ", position, " is past max_length");
    for (index_t m = 0; m < M; ++m) dst[m] = positions_[position * M + m];
    if (token >= 0) {
      if (token >= c_.vocab) fail<value_error>("tiny decoder: token ", token, " is not in the vocab");
      for (index_t m = 0; m < M; ++m) dst[m] += embedding_[token * M + m];
    }
  }

  /// x / sqrt(mean(x^2) + 1e-6) over the model dim.
  Tensor<T> rms_norm(const Tensor<T>& x) const {
    const Tensor<T> ms = mean(x * x, "model");
    return x / sqrt(ms + static_cast<T>(1e-6));
  }

  /// Multi-head attention of q [..., heads, kv] over k, v [..., memory_length,
  /// heads, kv] with the visibility mask; -> [..., model].
  Tensor<T> attend(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<bool>& visible,
                   const Layer& layer) const {
    Shape logits_shape = q.shape().without({"kv"}).with(Dim("memory_length", k.size_of("memory_length")));
    const Tensor<T> logits = einsum({q, k}, logits_shape) * static_cast<T>(1.0 / std::sqrt(static_cast<double>(c_.kv)));
    const Tensor<T> p = masked_softmax(logits, visible, "memory_length");
    const Tensor<T> o = einsum({p, v}, q.shape());
    return einsum({o, layer.wo}, q.shape().without({"heads", "kv"}).with(model()));
  }

  /// The MoE feed-forward on x [tokens..., model] grouped as `grouped`
  /// ([groups..., group, model] without the model dim); capacity = group size.
  Tensor<T> moe(const Tensor<T>& x, const Shape& grouped, Layer& layer) {
    auto out = layer.moe->forward(reshape(x, grouped.with(model())));
    auto& load = load_[static_cast<std::size_t>(&layer - layers_.data())];
    for (index_t e = 0; e < c_.experts; ++e)
      load[static_cast<std::size_t>(e)] += out.stats.tokens_per_expert[static_cast<std::size_t>(e)];
    return reshape(std::move(out.outputs), x.shape());
  }

  Config c_;
  Tensor<T> embedding_, positions_;
  std::vector<Layer> layers_;
  std::vector<std::vector<index_t>> load_;
};

}  // namespace tiny
