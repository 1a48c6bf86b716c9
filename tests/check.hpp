// tests/check.hpp - Catch2 helpers shared by the tests.
#pragma once

#include <catch2/catch.hpp>

#include <exception>
#include <string>

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
