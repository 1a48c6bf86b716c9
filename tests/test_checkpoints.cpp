// Hugging Face checkpoints: the tiny synthetic models of
// scripts/make_tiny_checkpoints.py (tests/fixtures/checkpoints/) load and run
// as the numpy transcriptions of their HF blocks say; malformed safetensors
// files and configs are rejected with a message naming the file, tensor or
// key. Every file a test writes lives in a directory it made.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

#include "einmoe/checkpoints/hf_checkpoint.hpp"

using namespace einmoe;
namespace fs = std::filesystem;

namespace {

std::map<std::string, std::string> case_txt(const fs::path& dir) {
  std::map<std::string, std::string> m;
  std::ifstream f(dir / "case.txt");
  std::string k, v;
  while (f >> k >> v) m[k] = v;
  return m;
}

std::vector<fs::path> checkpoint_dirs() {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(fs::path(EINMOE_FIXTURES_DIR) / "checkpoints")) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

/// A safetensors file from a header (JSON text) and data bytes.
void write_st(const std::string& path, const std::string& header, const std::string& data, std::uint64_t n = ~0ull) {
  std::ofstream f(path, std::ios::binary);
  if (n == ~0ull) n = header.size();
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((n >> (8 * i)) & 0xff));
  f << header << data;
}

std::string floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), std::data(v), s.size());
  return s;
}

}  // namespace

TEST_CASE("HF checkpoints: tiny Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3 (F32, BF16, sharded) run as the HF blocks",
          "[checkpoints][fixtures]") {
  const auto dirs = checkpoint_dirs();
  REQUIRE(dirs.size() == 6);
  for (const auto& dir : dirs) {
    INFO(dir.filename().string());
    const auto c = case_txt(dir);
    const HfCheckpoint ck(dir.string());
    const index_t layer = std::stoll(c.at("layer")), M = std::stoll(c.at("model")), E = std::stoll(c.at("experts"));
    CHECK(ck.config().hidden_size == M);
    CHECK(ck.config().experts == E);
    CHECK(ck.config().is_moe_layer(layer));
    const auto x = load_npy<float>((dir / "x.npy").string(), {"tokens", "model"});
    const auto want = load_npy<double>((dir / "outputs.npy").string(), {"tokens", "model"});
    const auto want_logits = load_npy<double>((dir / "router_logits.npy").string(), {"tokens", "experts"});
    const MoELayer<float> l = load_moe_layer(ck, layer);
    const auto y = l.forward(x);
    CHECK(y.outputs.shape() == x.shape());
    double err = 0, ymax = 0;
    for (index_t i = 0; i < want.size(); ++i)
      err = std::max(err, std::fabs(double(y.outputs[i]) - want[i])), ymax = std::max(ymax, std::fabs(want[i]));
    CHECK(err <= 1e-5 * std::max(1.0, ymax));
    const auto gx = reshape(x, Shape{{"group", x.size_of("tokens")}, {"model", M}});
    const auto logits = l.router_logits(gx);
    for (index_t i = 0; i < want_logits.size(); ++i) CHECK(std::fabs(double(logits[i]) - want_logits[i]) <= 1e-5);
    // Reads in place: weights stored as T come back as views of the mapping.
    const std::string g = ck.config().prefix(layer) + "gate.weight";
    if (c.at("dtype") == "BF16") {
      CHECK(ck.bf16_experts(layer));
      CHECK(ck.in_mapping(g, ck.tensor<bfloat16>(g, {"experts", "model"}).data()));
      CHECK_FALSE(ck.in_mapping(g, ck.tensor<float>(g, {"experts", "model"}).data()));  // converted
    } else {
      CHECK(ck.in_mapping(g, ck.tensor<float>(g, {"experts", "model"}).data()));
      CHECK_THROWS_NAMING(ck.tensor<bfloat16>(g, {"experts", "model"}), value_error, "F32");
    }
    // Expert precisions run from the same checkpoint, close to fp32.
    for (Precision p : {Precision::bf16, Precision::int8}) {
      if (!backend_supports(Backend::automatic, p)) continue;
      const auto yp = load_moe_layer(ck, layer, p).forward(x);
      double e2 = 0;
      for (index_t i = 0; i < want.size(); ++i) e2 = std::max(e2, std::fabs(double(yp.outputs[i]) - want[i]));
      CHECK(e2 <= (p == Precision::bf16 ? 2e-2 : 6e-2) * std::max(1.0, ymax));
    }
    // Dense and missing layers are errors naming the layer.
    if (c.at("dense") != "-1")
      CHECK_THROWS_NAMING(load_moe_layer(ck, std::stoll(c.at("dense"))), value_error, "dense layer");
    CHECK_THROWS_NAMING(load_moe_layer(ck, std::stoll(c.at("layers"))), value_error, "does not exist");
    CHECK_THROWS_NAMING(load_moe_layer(ck, -1), value_error, "does not exist");
  }
}

TEST_CASE("safetensors: malformed files are rejected naming the file and the problem", "[checkpoints][errors]") {
  TempDir t;
  const std::string p = t.file("m.safetensors");
  auto rejects = [&](const std::string& header, const std::string& data, const std::string& what,
                     std::uint64_t n = ~0ull) {
    write_st(p, header, data, n);
    INFO(header);
    CHECK_THROWS_NAMING(SafetensorsFile(p), io_error, what);
    CHECK_THROWS_NAMING(SafetensorsFile(p), io_error, p);
  };
  const std::string two = floats({1.f, 2.f});
  {
    std::ofstream f(p, std::ios::binary);
    f << "abc";
  }
  CHECK_THROWS_NAMING(SafetensorsFile(p), io_error, "8-byte");
  rejects("{}", "", "exceeds the file", 100);
  rejects("{\"a\":", "", "not JSON");
  rejects("[1,2]", "", "not a JSON object");
  rejects(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", two, "dtype, shape and data_offsets");
  rejects(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", two, "unknown dtype");
  // a tensor name with a newline and a control byte (JSON escapes): the
  // message stays one printable line
  rejects(R"({"a\n\u0001":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", two, "tensor \"a\\x0a\\x01\"");
  try {
    SafetensorsFile f(p);
  } catch (const io_error& e) {
    for (const char c : std::string(e.what()))
      CHECK((static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f));
  }
  rejects(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", two, "non-negative");
  rejects(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", two, "backwards");
  rejects(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", two, "past the file");
  rejects(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", two, "needs 3 x 4");
  rejects(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
      two, "overlaps");
  rejects(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", two, "hole");
  rejects(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", two, "after the last tensor");
  rejects(R"({"__metadata__":{"x":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", two, "__metadata__");
  rejects(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,8]}})", two,
          "\"a\"");
  CHECK_THROWS_NAMING(SafetensorsFile(t.file("absent.safetensors")), io_error, "absent.safetensors");
  CHECK_THROWS_NAMING(SafetensorsFile(t.path), io_error, "not a regular file");

  // A valid file: F32 in place, F16 and BF16 converted, I64 refused,
  // misaligned F32 copied, names and ranks checked.
  std::string data = floats({1.5f, -2.f});      // a: F32 [2] at 0
  const std::uint16_t h[2] = {0x3c00, 0xc100};  // b: F16 [2] = 1, -2.5 at 8
  data.append(reinterpret_cast<const char*>(h), 4);
  const std::uint16_t bf[2] = {0x3fc0, 0x4000};  // c: BF16 [2] = 1.5, 2 at 12
  data.append(reinterpret_cast<const char*>(bf), 4);
  data.append(8, '\0');                     // d: I64 [1] at 16
  data.append(floats({7.f}).substr(0, 4));  // e: F32 [1] at 24
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},)"
      R"("c":{"dtype":"BF16","shape":[1,2],"data_offsets":[12,16]},"d":{"dtype":"I64","shape":[1],"data_offsets":[16,24]},)"
      R"("e":{"dtype":"F32","shape":[1],"data_offsets":[24,28]},"__metadata__":{"format":"pt"}})";
  // header padded so the data starts 8-aligned, then once more 2 bytes off
  for (const std::string& pad :
       {std::string((8 - header.size() % 8) % 8, ' '), std::string((8 - header.size() % 8) % 8 + 2, ' ')}) {
    write_st(p, header + pad, data);
    const SafetensorsFile f(p);
    const bool aligned = (8 + header.size() + pad.size()) % 4 == 0;
    INFO("data offset " << 8 + header.size() + pad.size());
    CHECK(f.names() == std::vector<std::string>{"a", "b", "c", "d", "e"});
    const auto a = f.tensor<float>("a", {"x"});
    CHECK(a.to_vector() == std::vector<float>{1.5f, -2.f});
    CHECK(f.in_mapping(a.data()) == aligned);  // a view of the read-only mapping, or of a copy
    static_assert(!decltype(a)::writable());
    CHECK(f.tensor<double>("a", {"x"}).to_vector() == std::vector<double>{1.5, -2.0});
    CHECK(f.tensor<float>("b", {"x"}).to_vector() == std::vector<float>{1.f, -2.5f});
    CHECK(f.tensor<float>("c", {"r", "x"}).to_vector() == std::vector<float>{1.5f, 2.f});
    const auto c16 = f.tensor<bfloat16>("c", {"r", "x"});
    CHECK(c16.data()[1].bits == 0x4000);
    CHECK_THROWS_NAMING(f.tensor<float>("d", {"x"}), value_error, "I64");
    CHECK_THROWS_NAMING(f.tensor<float>("zz", {"x"}), not_found_error, "\"zz\"");
    CHECK_THROWS_NAMING(f.tensor<float>("a", {"x", "y"}), shape_error, "rank 1");
    CHECK_THROWS_NAMING(f.tensor<bfloat16>("b", {"x"}), value_error, "F16");
  }
  // A view keeps the mapping alive after the file object is gone.
  TensorView<const float> kept;
  {
    write_st(p, header + std::string((8 - header.size() % 8) % 8, ' '), data);
    kept = SafetensorsFile(p).tensor<float>("a", {"x"});
  }
  fs::remove(p);
  CHECK(kept.to_vector() == std::vector<float>{1.5f, -2.f});
}

TEST_CASE("HF checkpoints: bad configs, indexes and shapes are named", "[checkpoints][errors]") {
  TempDir t;
  const fs::path src = fs::path(EINMOE_FIXTURES_DIR) / "checkpoints" / "qwen3_moe_f32_sharded";
  auto fresh = [&](const std::string& name) {
    const fs::path d = fs::path(t.path) / name;
    fs::copy(src, d, fs::copy_options::recursive);
    return d;
  };
  auto edit_config = [&](const fs::path& d, const std::function<void(nlohmann::json&)>& f) {
    nlohmann::json j = detail::read_json((d / "config.json").string());
    f(j);
    std::ofstream(d / "config.json") << j.dump();
  };
  CHECK_THROWS_NAMING(HfCheckpoint(t.path), io_error, "config.json");
  CHECK_THROWS_NAMING(HfCheckpoint(t.path), not_found_error, "config.json");  // a missing file
  CHECK_THROWS_AS(SafetensorsFile(t.path + "/none.safetensors"), not_found_error);
  {
    const auto d = fresh("type");
    edit_config(d, [](nlohmann::json& j) { j["model_type"] = "llama"; });
    CHECK_THROWS_NAMING(HfCheckpoint(d.string()), value_error, "llama");
  }
  {
    const auto d = fresh("missing");
    edit_config(d, [](nlohmann::json& j) { j.erase("num_experts"); });
    CHECK_THROWS_NAMING(HfCheckpoint(d.string()), not_found_error, "\"num_experts\" is missing");
  }
  {
    const auto d = fresh("type2");
    edit_config(d, [](nlohmann::json& j) { j["num_experts_per_tok"] = "two"; });
    CHECK_THROWS_NAMING(HfCheckpoint(d.string()), value_error, "\"num_experts_per_tok\" is not an integer");
  }
  {
    const auto d = fresh("k");
    edit_config(d, [](nlohmann::json& j) { j["num_experts_per_tok"] = 9; });
    CHECK_THROWS_NAMING(HfCheckpoint(d.string()), value_error, "num_experts_per_tok");
  }
  {
    const auto d = fresh("act");
    edit_config(d, [](nlohmann::json& j) { j["hidden_act"] = "mish"; });
    CHECK_THROWS_NAMING(HfCheckpoint(d.string()), value_error, "mish");
  }
  {
    const auto d = fresh("shape");
    edit_config(d, [](nlohmann::json& j) { j["moe_intermediate_size"] = 5; });
    const HfCheckpoint ck(d.string());
    CHECK_THROWS_NAMING(load_moe_layer(ck, 0), shape_error, "experts.0.gate_proj.weight");
  }
  {
    const auto d = fresh("experts");
    edit_config(d, [](nlohmann::json& j) { j["num_experts"] = 5; });
    const HfCheckpoint ck(d.string());
    CHECK_THROWS_NAMING(load_moe_layer(ck, 0), shape_error, "gate.weight");
  }
  {
    const auto d = fresh("index");
    nlohmann::json j = detail::read_json((d / "model.safetensors.index.json").string());
    j["weight_map"]["model.layers.0.mlp.gate.weight"] = "../model-00001-of-00002.safetensors";
    std::ofstream(d / "model.safetensors.index.json") << j.dump();
    CHECK_THROWS_NAMING(HfCheckpoint(d.string()), io_error, "not a file in the model directory");
  }
  {
    const auto d = fresh("moved");
    nlohmann::json j = detail::read_json((d / "model.safetensors.index.json").string());
    const std::string name = "model.layers.0.mlp.gate.weight";
    const std::string other = j["weight_map"][name] == "model-00001-of-00002.safetensors"
                                  ? "model-00002-of-00002.safetensors"
                                  : "model-00001-of-00002.safetensors";
    j["weight_map"][name] = other;
    std::ofstream(d / "model.safetensors.index.json") << j.dump();
    const HfCheckpoint ck(d.string());
    CHECK_THROWS_NAMING(load_moe_layer(ck, 0), not_found_error, "the index puts it there");
    j["weight_map"].erase(name);
    std::ofstream(d / "model.safetensors.index.json") << j.dump();
    CHECK_THROWS_NAMING(load_moe_layer(HfCheckpoint(d.string()), 0), not_found_error, name);
  }
  {
    const auto d = fresh("noshard");
    fs::remove(d / "model-00002-of-00002.safetensors");
    const HfCheckpoint ck(d.string());
    CHECK_THROWS_NAMING(load_moe_layer(ck, 0), io_error, "model-00002-of-00002.safetensors");
  }
  {
    const auto d = fresh("nofile");
    fs::remove(d / "model.safetensors.index.json");
    CHECK_THROWS_NAMING(HfCheckpoint(d.string()), io_error, "model.safetensors");
  }
}

TEST_CASE("HF configs: each model_type's keys and defaults are the transformers configuration class's",
          "[checkpoints]") {
  auto parse = [](const char* text) { return parse_hf_moe_config(nlohmann::json::parse(text), "config.json"); };
  // OlmoeConfig sizes its experts by intermediate_size; it has no
  // moe_intermediate_size (a real OLMoE config.json, trimmed).
  const auto olmoe = parse(R"({"model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024,
      "num_hidden_layers": 16, "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": false})");
  CHECK(olmoe.expert_hidden == 1024);
  CHECK(olmoe.experts == 64);
  CHECK(olmoe.normalize == TopKNormalize::none);
  CHECK(olmoe.shared_hidden == 0);
  // Qwen2MoeConfig / Qwen3MoeConfig: moe_intermediate_size (intermediate_size is the dense MLP's);
  // norm_topk_prob, decoder_sparse_step and mlp_only_layers default to false, 1, [].
  const auto qwen3 = parse(R"({"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
      "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_experts": 128, "num_experts_per_tok": 8})");
  CHECK(qwen3.expert_hidden == 768);
  CHECK(qwen3.normalize == TopKNormalize::none);
  CHECK(qwen3.decoder_sparse_step == 1);
  CHECK(qwen3.is_moe_layer(0));
  // MixtralConfig: num_local_experts, experts sized by intermediate_size, always normalized.
  const auto mixtral = parse(R"({"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
      "num_hidden_layers": 32, "num_local_experts": 8, "num_experts_per_tok": 2})");
  CHECK(mixtral.expert_hidden == 14336);
  CHECK(mixtral.normalize == TopKNormalize::topk);
  // DeepseekV3Config's defaults: n_shared_experts 1, n_group 8, topk_group 4,
  // routed_scaling_factor 2.5, first_k_dense_replace 3, norm_topk_prob true.
  const auto ds = parse(R"({"model_type": "deepseek_v3", "hidden_size": 7168, "moe_intermediate_size": 2048,
      "num_hidden_layers": 61, "n_routed_experts": 256, "num_experts_per_tok": 8})");
  CHECK(ds.expert_groups == 8);
  CHECK(ds.topk_expert_groups == 4);
  CHECK(ds.scale == 2.5);
  CHECK(ds.first_k_dense_replace == 3);
  CHECK_FALSE(ds.is_moe_layer(2));
  CHECK(ds.is_moe_layer(3));
  CHECK(ds.shared_hidden == 2048);
  CHECK(ds.normalize == TopKNormalize::topk);
  // a size the config does not give is an error naming the key (never a default)
  CHECK_THROWS_NAMING(parse(R"({"model_type": "olmoe", "hidden_size": 8, "num_hidden_layers": 1, "num_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 6})"),
                      not_found_error, "\"intermediate_size\" is missing");
}
