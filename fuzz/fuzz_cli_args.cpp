// libFuzzer harness: the einmoe command's flag parser (tools/einmoe/args.hpp)
// on arbitrary argument lists (NUL-separated). Parsing and reading typed
// values either succeeds or fails with the command's one-line CliError;
// nothing is read from or written to files here.
#include <string>
#include <vector>

#include "einmoe/args.hpp"

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
  std::vector<std::string> argv;
  std::string cur;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      argv.push_back(cur);
      cur.clear();
    } else {
      cur += static_cast<char>(data[i]);
    }
  }
  argv.push_back(cur);
  const std::vector<cli::Flag> flags{{"--capacity", true}, {"--threshold", true}, {"--threads", true},
                                     {"--out", true},      {"--dense", false},    {"--policy", true}};
  try {
    const cli::Args a(argv, flags, "gate");
    (void)a.integer("--capacity", 1, 4);
    (void)a.integer("--threads", 1, 1, 1024);
    (void)a.real("--threshold", 0.2);
    (void)a.get_or("--policy", "all");
    (void)a.has("--dense");
  } catch (const cli::CliError& e) {
    const std::string m = e.what();
    if (m.find('\n') != std::string::npos) __builtin_trap();  // one line
  }
  return 0;
}
