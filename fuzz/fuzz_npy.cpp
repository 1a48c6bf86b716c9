// libFuzzer harness: the .npy reader on arbitrary bytes, for every dtype and
// ranks 0-3. Anything but a clean einmoe::error (or a successful read of
// exactly what the header declares) is a bug the sanitizers report.
#include <sstream>
#include <string>
#include <vector>

#include "einmoe/io/npy.hpp"

namespace {
template <class T>
void try_read(const std::string& bytes, bool sized) {
  for (std::size_t rank = 0; rank <= 3; ++rank) {
    std::vector<std::string> names;
    for (std::size_t i = 0; i < rank; ++i) names.push_back("d" + std::to_string(i));
    std::istringstream in(bytes);
    try {
      const auto t =
          sized ? einmoe::read_npy<T>(in, names, "fuzz", bytes.size()) : einmoe::read_npy<T>(in, names, "fuzz");
      if (t.rank() != static_cast<einmoe::index_t>(rank)) __builtin_trap();
      std::ostringstream out;  // what was read writes back
      einmoe::write_npy(out, t);
    } catch (const einmoe::error&) {}
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const bool sized = size % 2 == 0;
  try_read<float>(bytes, sized);
  try_read<double>(bytes, sized);
  try_read<std::int32_t>(bytes, sized);
  try_read<std::int64_t>(bytes, sized);
  try_read<bool>(bytes, sized);
  return 0;
}
