// Loads the MoE block of one decoder layer from a Hugging Face model
// directory (config.json + safetensors), runs it on random tokens and prints
// its routing statistics and time.
//
//   hf_moe_block MODEL_DIR [--layer N] [--tokens T] [--precision fp32|bf16|int8]
//
// Without --layer it takes the first MoE layer of the model. Works with
// mixtral, qwen2_moe, qwen3_moe, olmoe and deepseek_v3 checkpoints, F32 or
// BF16, single-file or sharded (try tests/fixtures/checkpoints/*).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <einmoe/einmoe.hpp>

using namespace einmoe;

namespace {

[[noreturn]] void usage(const char* why) {
  std::fprintf(
      stderr, "hf_moe_block: %s\nusage: hf_moe_block MODEL_DIR [--layer N] [--tokens T] [--precision fp32|bf16|int8]\n",
      why);
  std::exit(2);
}

long long number(const char* flag, const char* s) {
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (*end != '\0' || v < 0 || v > (1 << 24)) usage((std::string(flag) + " needs a number in [0, 2^24]").c_str());
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') usage("missing MODEL_DIR");
  const std::string dir = argv[1];
  long long layer = -1, tokens = 64;
  std::string precision = "fp32";
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) usage((std::string(argv[i]) + " needs a value").c_str());
    if (std::strcmp(argv[i], "--layer") == 0) layer = number("--layer", argv[i + 1]);
    else if (std::strcmp(argv[i], "--tokens") == 0) tokens = number("--tokens", argv[i + 1]);
    else if (std::strcmp(argv[i], "--precision") == 0) precision = argv[i + 1];
    else usage((std::string("unknown flag ") + argv[i]).c_str());
  }
  try {
    const HfCheckpoint ck(dir);
    const HfMoEConfig& c = ck.config();
    if (layer < 0)
      for (index_t i = 0; i < c.num_layers && layer < 0; ++i)
        if (c.is_moe_layer(i)) layer = i;
    if (layer < 0) usage("the model has no MoE layer");
    const auto t0 = std::chrono::steady_clock::now();
    const MoELayer<float> block = load_moe_layer(ck, layer, parse_precision(precision));
    const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s, layer %lld: %lld experts (top-%lld, %s scores%s%s), hidden %lld, expert hidden %lld%s\n",
                c.model_type.c_str(), layer, static_cast<long long>(c.experts), static_cast<long long>(c.k),
                to_string(c.score), c.normalize == TopKNormalize::topk ? ", normalized" : "",
                c.expert_groups > 1 ? ", group-limited" : "", static_cast<long long>(c.hidden_size),
                static_cast<long long>(c.expert_hidden),
                c.shared_hidden > 0 ? (", shared expert " + std::to_string(c.shared_hidden)).c_str() : "");
    std::printf("laid out %.1f MB of %s weights (%s experts) in %.1f ms\n", double(block.weight_bytes()) / 1e6,
                ck.bf16_experts(layer) ? "BF16" : "F32", precision.c_str(), load_ms);
    const Tensor<float> x = Rng(7).normal<float>(Shape{{"tokens", tokens}, {"model", c.hidden_size}});
    MoEResult<float> r;
    block.forward_into(r, x);  // warm up
    const auto t1 = std::chrono::steady_clock::now();
    block.forward_into(r, x);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
    std::printf("%lld tokens in %.3f ms (%d threads); z_loss %.4f, aux_loss %.4f\ntokens per expert:", tokens, ms,
                num_threads(), double(r.z_loss), double(r.aux_loss));
    for (auto n : r.stats.tokens_per_expert) std::printf(" %lld", static_cast<long long>(n));
    std::printf("\n");
  } catch (const einmoe::error& e) {
    std::fprintf(stderr, "hf_moe_block: %s\n", e.what());
    return 2;
  }
  return 0;
}
