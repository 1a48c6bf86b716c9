// libFuzzer harness: Shape::parse on arbitrary text. A parsed shape must print
// back to text that parses to the same shape.
#include <sstream>
#include <string>

#include "einmoe/core/dim.hpp"

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const einmoe::Shape s = einmoe::Shape::parse(text);
    std::string again;
    for (const auto& d : s) again += (again.empty() ? "" : ",") + d.name + ":" + std::to_string(d.size);
    if (einmoe::Shape::parse(again) != s) __builtin_trap();
    (void)s.num_elements();
  } catch (const einmoe::error&) {}
  return 0;
}
