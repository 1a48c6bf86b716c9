// tests/check.hpp - Catch2 helpers shared by the tests.
#pragma once

#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>

#include <unistd.h>

/// Matches an exception whose what() contains `text`.
class MessageContains : public Catch::MatcherBase<std::exception> {
 public:
  explicit MessageContains(std::string text) : text_(std::move(text)) {}
  bool match(const std::exception& e) const override { return std::string(e.what()).find(text_) != std::string::npos; }
  std::string describe() const override { return "message contains \"" + text_ + "\""; }

 private:
  std::string text_;
};

/// The expression throws `Type` and the message names `text` (a dim, a flag,
/// a file...).
#define CHECK_THROWS_NAMING(expr, Type, text) CHECK_THROWS_MATCHES(expr, Type, MessageContains(text))

/// A directory the test made (mkdtemp under $TMPDIR, else /tmp), removed
/// with everything in it when the object goes: tests write only there
/// (ctest runs test cases in parallel processes, and as root).
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& prefix = "einmoe_test") {
    const char* tmp = std::getenv("TMPDIR");
    std::string t = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + prefix + "_XXXXXX";
    if (!::mkdtemp(t.data())) throw std::runtime_error("tests: cannot make a temporary directory " + t);
    path = t;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

namespace check {
/// Same shape and the same bits in every element (NaNs included).
template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  return a.shape() == b.shape() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), sizeof(*a.data()) * static_cast<std::size_t>(a.size())) == 0);
}
}  // namespace check
