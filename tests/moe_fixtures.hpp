// tests/moe_fixtures.hpp - reading the golden cases that
// scripts/reference_moe.py (numpy) wrote into tests/fixtures/moe/.
#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "einmoe/einmoe.hpp"

#ifndef EINMOE_FIXTURES_DIR
#error "EINMOE_FIXTURES_DIR must point at tests/fixtures"
#endif

namespace fixtures {

struct Case {
  std::string name;
  std::filesystem::path dir;
  std::map<std::string, std::string> config;
  bool f64 = true;
  bool has(const std::string& array) const { return std::filesystem::exists(dir / (array + ".npy")); }
  std::string path(const std::string& array) const { return (dir / (array + ".npy")).string(); }
  template <class T>
  einmoe::Tensor<T> load(const std::string& array, const std::vector<std::string>& names) const {
    return einmoe::load_npy<T>(path(array), names);
  }
  long long integer(const std::string& k) const { return std::stoll(config.at(k)); }
};

/// The cases of a kind ("gate", "truncated", "moe", ...) in a fixtures folder.
inline std::vector<Case> cases(const std::string& kind, const std::string& folder = "moe") {
  std::vector<Case> out;
  const std::filesystem::path root = std::filesystem::path(EINMOE_FIXTURES_DIR) / folder;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    Case c;
    c.name = e.path().filename().string();
    c.dir = e.path();
    std::ifstream f(e.path() / "config.txt");
    std::string k, v;
    while (f >> k >> v) c.config[k] = v;
    c.f64 = c.name.find("_f32") == std::string::npos;
    if (c.config["kind"] == kind) out.push_back(c);
  }
  std::sort(out.begin(), out.end(), [](const Case& a, const Case& b) { return a.name < b.name; });
  return out;
}

}  // namespace fixtures
