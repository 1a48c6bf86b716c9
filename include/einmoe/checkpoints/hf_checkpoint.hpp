// einmoe/checkpoints/hf_checkpoint.hpp - MoE blocks straight from a Hugging
// Face model directory (config.json + safetensors).
//
// Example:
//   HfCheckpoint ck(model_dir);                       // config.json, model.safetensors(.index.json)
//   MoELayer<float> layer = load_moe_layer(ck, 2);    // the MoE block of decoder layer 2
//   MoEResult<float> y = layer.forward(x);            // x [tokens..., model] -> y.outputs, same shape
//
// Supported model_types and what they map to (HF Linear weights are [out, in];
// einmoe reads them in place by naming their dims, never transposing):
//   mixtral      model.layers.{i}.block_sparse_moe.gate.weight [E, M],
//                ...experts.{j}.w1 / w3 / w2.weight (gate, up, down);
//                softmax scores, top-k, normalized over the k
//   qwen2_moe    model.layers.{i}.mlp.gate.weight, mlp.experts.{j}.gate_proj /
//                up_proj / down_proj.weight, mlp.shared_expert.*.weight and
//                mlp.shared_expert_gate.weight [1, M]; normalized iff
//                norm_topk_prob; MoE layers per decoder_sparse_step and
//                mlp_only_layers
//   qwen3_moe, olmoe  the same names without the shared expert (OLMoE's
//                experts are sized by intermediate_size, Qwen's by
//                moe_intermediate_size)
//   deepseek_v3  mlp.gate.weight, mlp.gate.e_score_correction_bias,
//                mlp.experts.{j}.*, mlp.shared_experts.*; sigmoid scores,
//                selection bias, n_group / topk_group, norm_topk_prob,
//                routed_scaling_factor; layers before first_k_dense_replace
//                are dense (not MoE)
// Routing is dropless (no capacity), as in these models' inference code.
// Config keys are the transformers configuration classes' (MixtralConfig,
// Qwen2MoeConfig, Qwen3MoeConfig, OlmoeConfig, DeepseekV3Config); a key
// missing from config.json takes that class's default (e.g. n_group 8,
// topk_group 4, routed_scaling_factor 2.5, first_k_dense_replace 3 for
// deepseek_v3), except the sizes - hidden_size, num_hidden_layers, the
// expert count and width, num_experts_per_tok - which must be given.
//
// Memory: tensors are views of the memory-mapped files. The experts of a
// layer are separate tensors in the file; moe_weights() stacks them into one
// [experts, out, in] tensor per projection in the checkpoint's own dtype (one
// copy of the layer's expert weights, owned by the caller), which the layer
// then lays out for its kernels; load_moe_layer frees the stack once the
// layer is built. BF16 checkpoints stay bfloat16 until the layout (exact
// values; fp32 layers compute from them exactly).
//
// Errors name the file, the tensor or the config key: io_error for files
// that cannot be read or are malformed, not_found_error for a missing file,
// tensor or config key, value_error for a layer that is not an MoE layer or
// an unsupported model_type, shape_error for a tensor whose shape disagrees
// with the config.
#pragma once

#if !defined(EINMOE_HAS_JSON) && !__has_include(<nlohmann/json.hpp>)
#error "einmoe/checkpoints needs nlohmann/json (Debian: nlohmann-json3-dev)"
#endif

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "einmoe/checkpoints/safetensors.hpp"
#include "einmoe/moe/moe_layer.hpp"

namespace einmoe {

/// The MoE-relevant part of a model's config.json.
struct HfMoEConfig {
  std::string model_type;
  index_t hidden_size = 0;    ///< M
  index_t num_layers = 0;     ///< num_hidden_layers
  index_t experts = 0;        ///< routed experts
  index_t k = 0;              ///< num_experts_per_tok
  index_t expert_hidden = 0;  ///< H of a routed expert
  index_t shared_hidden = 0;  ///< H of the shared expert (0: none)
  bool shared_gate = false;   ///< qwen2_moe's shared_expert_gate
  Score score = Score::softmax;
  TopKNormalize normalize = TopKNormalize::none;
  index_t expert_groups = 1, topk_expert_groups = 1;  ///< n_group, topk_group
  double scale = 1.0;                                 ///< routed_scaling_factor
  bool selection_bias = false;                        ///< deepseek_v3's e_score_correction_bias
  Activation activation = Activation::silu;
  index_t first_k_dense_replace = 0;
  index_t decoder_sparse_step = 1;
  std::vector<index_t> mlp_only_layers;

  /// Whether decoder layer i has an MoE block (by the model's own rule).
  /// Never throws.
  bool is_moe_layer(index_t i) const {
    if (i < 0 || i >= num_layers) return false;
    if (model_type == "deepseek_v3") return i >= first_k_dense_replace;
    if (model_type == "qwen2_moe" || model_type == "qwen3_moe") {
      for (index_t l : mlp_only_layers)
        if (l == i) return false;
      return experts > 0 && (i + 1) % decoder_sparse_step == 0;
    }
    return true;
  }
  /// The tensor-name prefix of layer i's MoE block.
  /// Throws nothing but std::bad_alloc.
  std::string prefix(index_t i) const {
    return "model.layers." + std::to_string(i) + (model_type == "mixtral" ? ".block_sparse_moe." : ".mlp.");
  }
};

namespace detail {

inline Activation hf_activation(const std::string& a, const std::string& where) {
  if (a == "silu" || a == "swish") return Activation::silu;
  if (a == "gelu") return Activation::gelu;
  if (a == "gelu_pytorch_tanh" || a == "gelu_new" || a == "gelu_fast") return Activation::gelu_tanh;
  if (a == "relu") return Activation::relu;
  raise<value_error>(where, ": hidden_act \"", a, "\" is not supported (silu, gelu, gelu_pytorch_tanh, relu)");
}

class JsonKeys {
 public:
  JsonKeys(const nlohmann::json& j, std::string where) : j_(j), where_(std::move(where)) {}
  bool has(const char* k) const { return j_.contains(k) && !j_[k].is_null(); }
  index_t integer(const char* k, index_t lo) const {
    if (!has(k)) raise<not_found_error>(where_, ": \"", k, "\" is missing");
    const auto& v = j_[k];
    if (!v.is_number_integer()) raise<value_error>(where_, ": \"", k, "\" is not an integer");
    const auto x = v.get<std::int64_t>();
    if (x < lo) raise<value_error>(where_, ": \"", k, "\" is ", x, ", expected at least ", lo);
    return static_cast<index_t>(x);
  }
  index_t integer_or(const char* k, index_t lo, index_t dflt) const { return has(k) ? integer(k, lo) : dflt; }
  double real_or(const char* k, double dflt) const {
    if (!has(k)) return dflt;
    if (!j_[k].is_number()) raise<value_error>(where_, ": \"", k, "\" is not a number");
    const double x = j_[k].get<double>();
    if (!std::isfinite(x)) raise<value_error>(where_, ": \"", k, "\" is not finite");
    return x;
  }
  bool boolean_or(const char* k, bool dflt) const {
    if (!has(k)) return dflt;
    if (!j_[k].is_boolean()) raise<value_error>(where_, ": \"", k, "\" is not true or false");
    return j_[k].get<bool>();
  }
  std::string string_or(const char* k, const std::string& dflt) const {
    if (!has(k)) return dflt;
    if (!j_[k].is_string()) raise<value_error>(where_, ": \"", k, "\" is not a string");
    return j_[k].get<std::string>();
  }
  const nlohmann::json& json() const { return j_; }
  const std::string& where() const { return where_; }

 private:
  const nlohmann::json& j_;
  std::string where_;
};

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) raise_cannot_open(path, path, ": cannot open");
  try {
    nlohmann::json j = nlohmann::json::parse(f);
    if (!j.is_object()) raise<io_error>(path, ": not a JSON object");
    return j;
  } catch (const nlohmann::json::exception& e) {
    raise<io_error>(path, ": not valid JSON (", e.what(), ")");
  }
}

}  // namespace detail

/// Parses the MoE part of a config.json (see the file comment for the
/// model_types); value_error naming the file and key.
inline HfMoEConfig parse_hf_moe_config(const nlohmann::json& j, const std::string& where) {
  const detail::JsonKeys c(j, where);
  HfMoEConfig h;
  h.model_type = c.string_or("model_type", "");
  const std::string& t = h.model_type;
  if (t != "mixtral" && t != "qwen2_moe" && t != "qwen3_moe" && t != "olmoe" && t != "deepseek_v3")
    detail::raise<value_error>(where, ": model_type \"", t,
                               "\" is not supported (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3)");
  h.hidden_size = c.integer("hidden_size", 1);
  h.num_layers = c.integer("num_hidden_layers", 0);
  h.k = c.integer("num_experts_per_tok", 1);
  h.activation = detail::hf_activation(c.string_or("hidden_act", "silu"), where);
  if (t == "mixtral") {
    h.experts = c.integer("num_local_experts", 1);
    h.expert_hidden = c.integer("intermediate_size", 1);
    h.normalize = TopKNormalize::topk;
  } else if (t == "deepseek_v3") {
    // (DeepseekV3Config's defaults: n_shared_experts 1, n_group 8, topk_group 4,
    // routed_scaling_factor 2.5, first_k_dense_replace 3, norm_topk_prob true)
    h.experts = c.integer("n_routed_experts", 1);
    h.expert_hidden = c.integer("moe_intermediate_size", 1);
    h.shared_hidden = detail::mul_size(h.expert_hidden, c.integer_or("n_shared_experts", 0, 1), where,
                                       ": moe_intermediate_size x n_shared_experts");
    h.score = Score::sigmoid;
    h.selection_bias = true;
    h.normalize = c.boolean_or("norm_topk_prob", true) ? TopKNormalize::topk : TopKNormalize::none;
    h.expert_groups = c.integer_or("n_group", 1, 8);
    h.topk_expert_groups = c.integer_or("topk_group", 1, 4);
    h.scale = c.real_or("routed_scaling_factor", 2.5);
    h.first_k_dense_replace = c.integer_or("first_k_dense_replace", 0, 3);
  } else {
    // OlmoeConfig sizes its experts by intermediate_size (it has no
    // moe_intermediate_size); Qwen2MoeConfig and Qwen3MoeConfig by
    // moe_intermediate_size (their intermediate_size is the dense MLP's).
    h.experts = c.integer("num_experts", 1);
    h.expert_hidden = c.integer(t == "olmoe" ? "intermediate_size" : "moe_intermediate_size", 1);
    h.normalize = c.boolean_or("norm_topk_prob", false) ? TopKNormalize::topk : TopKNormalize::none;
    if (t != "olmoe") {
      h.decoder_sparse_step = c.integer_or("decoder_sparse_step", 1, 1);
      if (c.has("mlp_only_layers")) {
        const auto& m = j["mlp_only_layers"];
        if (!m.is_array()) detail::raise<value_error>(where, ": \"mlp_only_layers\" is not a list");
        for (const auto& v : m) {
          if (!v.is_number_integer()) detail::raise<value_error>(where, ": \"mlp_only_layers\" holds a non-integer");
          h.mlp_only_layers.push_back(v.get<index_t>());
        }
      }
    }
    if (t == "qwen2_moe") {
      h.shared_hidden = c.integer("shared_expert_intermediate_size", 0);
      h.shared_gate = h.shared_hidden > 0;
    }
  }
  if (h.k > h.experts)
    detail::raise<value_error>(where, ": num_experts_per_tok ", h.k, " exceeds the ", h.experts, " experts");
  if (h.expert_groups > 1) {
    if (h.experts % h.expert_groups != 0)
      detail::raise<value_error>(where, ": n_group ", h.expert_groups, " does not divide the ", h.experts, " experts");
    if (h.topk_expert_groups > h.expert_groups)
      detail::raise<value_error>(where, ": topk_group ", h.topk_expert_groups, " exceeds n_group ", h.expert_groups);
  }
  return h;
}

/// A Hugging Face model directory: config.json plus model.safetensors or a
/// sharded model.safetensors.index.json (see the file comment).
class HfCheckpoint {
 public:
  explicit HfCheckpoint(const std::string& dir) : dir_(dir) {
    const std::string cfg = dir + "/config.json";
    config_json_ = detail::read_json(cfg);
    config_ = parse_hf_moe_config(config_json_, cfg);
    const std::string index = dir + "/model.safetensors.index.json";
    const std::string single = dir + "/model.safetensors";
    std::ifstream probe(index);
    if (probe) {
      const nlohmann::json j = detail::read_json(index);
      if (!j.contains("weight_map") || !j["weight_map"].is_object())
        detail::raise<io_error>(index, ": no \"weight_map\" object");
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it->is_string()) detail::raise<io_error>(index, ": weight_map[\"", it.key(), "\"] is not a file name");
        const std::string f = it->get<std::string>();
        if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
          detail::raise<io_error>(index, ": weight_map[\"", it.key(), "\"] = \"", f,
                                  "\" is not a file in the model directory");
        weight_map_[it.key()] = f;
      }
    } else {
      files_[""] = std::make_shared<SafetensorsFile>(single);
    }
  }

  const HfMoEConfig& config() const { return config_; }
  const nlohmann::json& config_json() const { return config_json_; }
  const std::string& dir() const { return dir_; }

  /// Whether the checkpoint holds a tensor of this name.
  /// Throws io_error if a shard the index names cannot be read.
  bool has(const std::string& name) const {
    if (weight_map_.empty()) return files_.at("")->has(name);
    return weight_map_.count(name) > 0 && file_of(name).has(name);
  }
  /// The tensor `name` as a read-only view that keeps what it reads alive
  /// (the mapped file where its dtype is T's, else a converted copy), one dim
  /// name per axis: [dims[0]=stored size 0, ...]. Throws not_found_error for
  /// a missing tensor, shape_error for a rank other than dims.size().
  template <class T>
  TensorView<const T> tensor(const std::string& name, const std::vector<std::string>& dims) const {
    return file_of(name).tensor<T>(name, dims);
  }
  /// Whether `p` points into the mapped file that holds tensor `name` (a
  /// zero-copy tensor()). not_found_error for a missing tensor.
  bool in_mapping(const std::string& name, const void* p) const { return file_of(name).in_mapping(p); }
  /// The stored dtype of `name` ("F32", "BF16", ...).
  /// Throws not_found_error for a missing tensor.
  std::string dtype(const std::string& name) const { return file_of(name).entry(name).dtype; }

  /// Layer `layer`'s MoE weights with the experts stacked (see the file
  /// comment), as views that keep their memory alive; S is float or
  /// bfloat16. value_error if the layer is not an MoE layer, not_found_error
  /// for a missing tensor, shape_error naming a tensor whose shape disagrees
  /// with the config.
  template <class S>
  MoEWeights<S> moe_weights(index_t layer) const {
    check_layer(layer);
    const HfMoEConfig& c = config_;
    const std::string p = c.prefix(layer);
    const bool mixtral = c.model_type == "mixtral";
    const index_t M = c.hidden_size, E = c.experts, H = c.expert_hidden;
    MoEWeights<S> w;
    w.wg = checked<S>(p + "gate.weight", {"experts", "model"}, {E, M});
    const char* g = mixtral ? "w1" : "gate_proj";
    const char* u = mixtral ? "w3" : "up_proj";
    const char* d = mixtral ? "w2" : "down_proj";
    w.experts.wi_gate = stack<S>(p, g, {"hidden", "model"}, {H, M});
    w.experts.wi = stack<S>(p, u, {"hidden", "model"}, {H, M});
    w.experts.wo = stack<S>(p, d, {"model", "hidden"}, {M, H});
    if (c.shared_hidden > 0) {
      const std::string sp = p + (c.model_type == "deepseek_v3" ? "shared_experts." : "shared_expert.");
      const index_t Hs = c.shared_hidden;
      SharedExpertWeights<S> s;
      s.wi_gate = checked<S>(sp + "gate_proj.weight", {"hidden", "model"}, {Hs, M});
      s.wi = checked<S>(sp + "up_proj.weight", {"hidden", "model"}, {Hs, M});
      s.wo = checked<S>(sp + "down_proj.weight", {"model", "hidden"}, {M, Hs});
      if (c.shared_gate) {
        s.gate = reshape(checked<S>(p + "shared_expert_gate.weight", {"one", "model"}, {1, M}), Shape{{"model", M}});
      }
      w.shared = std::move(s);
    }
    return w;
  }

  /// The layer's options: the router of its model_type (dropless), gated
  /// experts with its activation, and the given precision and backend.
  /// Throws value_error if the layer does not exist or is dense, and the
  /// checkpoint's errors (not_found_error, shape_error) for its router bias.
  MoEOptions moe_options(index_t layer, Precision precision = Precision::fp32,
                         Backend backend = Backend::automatic) const {
    check_layer(layer);
    const HfMoEConfig& c = config_;
    TopKOptions t;
    t.k = c.k;
    t.score = c.score;
    t.normalize = c.normalize;
    t.expert_groups = c.expert_groups;
    t.topk_expert_groups = c.topk_expert_groups;
    t.scale = c.scale;
    if (c.selection_bias) {
      const std::string b = c.prefix(layer) + "gate.e_score_correction_bias";
      const TensorView<const double> v = checked<double>(b, {"experts"}, {c.experts});
      t.bias.assign(v.begin(), v.end());
      for (double x : t.bias)
        if (!std::isfinite(x)) detail::raise<value_error>(b, ": holds a non-finite value");
    }
    MoEOptions o;
    o.router = t;
    o.activation = c.activation;
    o.precision = precision;
    o.backend = backend;
    o.max_group_size = std::numeric_limits<index_t>::max();  // dropless: groups only bound the router's blocks
    return o;
  }

  /// The gradients of the checkpoint's tensors of layer `layer`'s MoE
  /// block, from `g`, the gradients of the layer built from moe_weights()
  /// (MoELayer::backward): one (name, gradient) per checkpoint tensor of
  /// the block, under its checkpoint name and in its stored shape (the
  /// stacked expert gradients split per expert); DeepSeek-V3's
  /// e_score_correction_bias gets zeros (it only selects experts).
  /// Throws value_error as moe_weights, shape_error if g does not match
  /// the block's sizes.
  std::vector<std::pair<std::string, Tensor<float>>> block_gradients(index_t layer,
                                                                     const MoEGradients<float>& g) const {
    check_layer(layer);
    const HfMoEConfig& c = config_;
    const std::string p = c.prefix(layer);
    const bool mixtral = c.model_type == "mixtral";
    const index_t M = c.hidden_size, E = c.experts, H = c.expert_hidden, Hs = c.shared_hidden;
    const char* op = "block_gradients";
    auto expect = [&](const TensorView<const float>& t, const Shape& want, const char* what) {
      if (t.shape() != want)
        detail::raise<shape_error>(op, ": the gradient of ", what, " is ", t.shape(), ", the block's is ", want);
    };
    std::vector<std::pair<std::string, Tensor<float>>> out;
    expect(g.wg, Shape{{"experts", E}, {"model", M}}, "wg");
    out.emplace_back(p + "gate.weight", g.wg.copy());
    if (c.selection_bias) out.emplace_back(p + "gate.e_score_correction_bias", Tensor<float>(Shape{{"experts", E}}));
    if (!g.experts.wi_gate) detail::raise<shape_error>(op, ": no gradient of wi_gate (the block's experts are gated)");
    const std::pair<const char*, const Tensor<float>*> projs[] = {{mixtral ? "w1" : "gate_proj", &*g.experts.wi_gate},
                                                                  {mixtral ? "w3" : "up_proj", &g.experts.wi},
                                                                  {mixtral ? "w2" : "down_proj", &g.experts.wo}};
    for (const auto& [proj, t] : projs) {
      const bool down = t == &g.experts.wo;
      const Shape one = down ? Shape{{"model", M}, {"hidden", H}} : Shape{{"hidden", H}, {"model", M}};
      expect(*t, Shape{{"experts", E}}.with(one[0]).with(one[1]), proj);
      for (index_t e = 0; e < E; ++e) {
        Tensor<float> slice_e(one, uninitialized);
        std::copy(t->data() + e * H * M, t->data() + (e + 1) * H * M, slice_e.data());
        out.emplace_back(p + "experts." + std::to_string(e) + "." + proj + ".weight", std::move(slice_e));
      }
    }
    if (Hs > 0) {
      if (!g.shared || !g.shared->wi_gate) detail::raise<shape_error>(op, ": no gradients of the shared expert");
      const std::string sp = p + (c.model_type == "deepseek_v3" ? "shared_experts." : "shared_expert.");
      expect(*g.shared->wi_gate, Shape{{"hidden", Hs}, {"model", M}}, "shared wi_gate");
      expect(g.shared->wi, Shape{{"hidden", Hs}, {"model", M}}, "shared wi");
      expect(g.shared->wo, Shape{{"model", M}, {"hidden", Hs}}, "shared wo");
      out.emplace_back(sp + "gate_proj.weight", g.shared->wi_gate->copy());
      out.emplace_back(sp + "up_proj.weight", g.shared->wi.copy());
      out.emplace_back(sp + "down_proj.weight", g.shared->wo.copy());
      if (c.shared_gate) {
        if (!g.shared->gate) detail::raise<shape_error>(op, ": no gradient of the shared expert's gate");
        expect(*g.shared->gate, Shape{{"model", M}}, "shared gate");
        out.emplace_back(p + "shared_expert_gate.weight",
                         reshape(g.shared->gate->copy(), Shape{{"one", 1}, {"model", M}}));
      }
    }
    return out;
  }

  /// Whether layer i's expert weights are stored as BF16.
  /// Throws value_error if the layer does not exist or is dense.
  bool bf16_experts(index_t layer) const {
    check_layer(layer);
    const std::string n =
        config_.prefix(layer) + "experts.0." + (config_.model_type == "mixtral" ? "w1" : "gate_proj") + ".weight";
    return has(n) && dtype(n) == "BF16";
  }

 private:
  const SafetensorsFile& file_of(const std::string& name) const {
    if (weight_map_.empty()) return *files_.at("");
    const auto it = weight_map_.find(name);
    if (it == weight_map_.end())
      detail::raise<not_found_error>(dir_, "/model.safetensors.index.json: no tensor \"", name, "\"");
    auto& f = files_[it->second];
    if (!f) f = std::make_shared<SafetensorsFile>(dir_ + "/" + it->second);
    if (!f->has(name))
      detail::raise<not_found_error>(f->path(), ": no tensor \"", name, "\" (the index puts it there)");
    return *f;
  }

  void check_layer(index_t layer) const {
    const HfMoEConfig& c = config_;
    if (layer < 0 || layer >= c.num_layers)
      detail::raise<value_error>(dir_, ": layer ", layer, " does not exist (num_hidden_layers = ", c.num_layers, ")");
    if (!c.is_moe_layer(layer)) {
      if (c.model_type == "deepseek_v3")
        detail::raise<value_error>(dir_, ": layer ", layer,
                                   " is a dense layer, not MoE (first_k_dense_replace = ", c.first_k_dense_replace,
                                   ")");
      detail::raise<value_error>(dir_, ": layer ", layer,
                                 " is a dense layer, not MoE (decoder_sparse_step = ", c.decoder_sparse_step,
                                 ", mlp_only_layers)");
    }
  }

  template <class S>
  TensorView<const S> checked(const std::string& name, const std::vector<std::string>& dims,
                              const std::vector<index_t>& sizes) const {
    TensorView<const S> t = tensor<S>(name, dims);
    for (std::size_t i = 0; i < dims.size(); ++i)
      if (t.size_of(dims[i]) != sizes[i]) {
        std::vector<Dim> want;
        for (std::size_t j = 0; j < dims.size(); ++j) want.emplace_back(dims[j], sizes[j]);
        detail::raise<shape_error>(name, ": shape ", t.shape(), " disagrees with config.json, which gives ",
                                   Shape(want));
      }
    return t;
  }

  /// experts.{j}.<proj>.weight for every j, as one [experts, dims...] tensor
  /// (a view that keeps its stacked copy alive).
  template <class S>
  TensorView<const S> stack(const std::string& prefix, const char* proj, const std::vector<std::string>& dims,
                            const std::vector<index_t>& sizes) const {
    const index_t E = config_.experts;
    const index_t per = detail::mul_size(sizes[0], sizes[1], "expert weights");
    Tensor<S> out(Shape{{"experts", E}, {dims[0], sizes[0]}, {dims[1], sizes[1]}}, uninitialized);
    for (index_t e = 0; e < E; ++e) {
      const TensorView<const S> t =
          checked<S>(prefix + "experts." + std::to_string(e) + "." + proj + ".weight", dims, sizes);
      std::copy(t.begin(), t.end(), out.data() + e * per);
    }
    return shared_view(std::move(out));
  }

  std::string dir_;
  nlohmann::json config_json_;
  HfMoEConfig config_;
  std::map<std::string, std::string> weight_map_;
  mutable std::map<std::string, std::shared_ptr<SafetensorsFile>> files_;
};

/// The MoE block of decoder layer `layer` as an fp32 (or bf16 / int8
/// expert) layer: weights read from the checkpoint, laid out once.
/// Throws as moe_options, moe_weights and MoELayer's constructor.
inline MoELayer<float> load_moe_layer(const HfCheckpoint& ck, index_t layer, Precision precision = Precision::fp32,
                                      Backend backend = Backend::automatic) {
  const MoEOptions o = ck.moe_options(layer, precision, backend);
  if (ck.bf16_experts(layer)) return MoELayer<float>(ck.moe_weights<bfloat16>(layer), o);
  return MoELayer<float>(ck.moe_weights<float>(layer), o);
}

}  // namespace einmoe
