// libFuzzer harness: the safetensors reader on arbitrary files. Every tensor
// of a file that opens must read (as float, viewed or converted) without a
// memory error; anything else is a clean einmoe::error.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "einmoe/checkpoints/safetensors.hpp"

namespace {
const std::string& scratch_file() {
  static const std::string path = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string t = std::string(tmp && *tmp ? tmp : "/tmp") + "/einmoe_fuzz_XXXXXX";
    if (!::mkdtemp(t.data())) std::abort();
    return t + "/input.safetensors";
  }();
  return path;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
  {
    std::ofstream f(scratch_file(), std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const einmoe::SafetensorsFile file(scratch_file());
    for (const auto& name : file.names()) {
      const auto& e = file.entry(name);
      std::vector<std::string> dims;
      for (std::size_t i = 0; i < e.shape.size(); ++i) dims.push_back("d" + std::to_string(i));
      try {
        const auto t = file.tensor<float>(name, dims);
        volatile float sink = 0;
        for (einmoe::index_t i = 0; i < t.size(); ++i) sink = sink + t[i];
      } catch (const einmoe::error&) {}
    }
  } catch (const einmoe::error&) {}
  return 0;
}
