// examples/cli/args.hpp - the einmoe command's flag parsing, file loading and
// all-or-nothing output writing. Every problem is a CliError: one line,
// naming the flag or file, exit status 2.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <einmoe/einmoe.hpp>

namespace cli {

struct CliError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A>
[[noreturn]] void fail(A&&... a) {
  throw CliError(einmoe::detail::cat(std::forward<A>(a)...));
}

/// A flag a subcommand accepts: "--capacity" (takes a value) or "--dense".
struct Flag {
  std::string name;
  bool takes_value;
};

class Args {
 public:
  Args(const std::vector<std::string>& argv, const std::vector<Flag>& spec, const std::string& command) {
    for (std::size_t i = 0; i < argv.size(); ++i) {
      const std::string& a = argv[i];
      const Flag* f = nullptr;
      for (const auto& s : spec)
        if (s.name == a) f = &s;
      if (!f) fail(command, ": unknown flag ", a, " (see einmoe ", command, " --help)");
      if (seen_.count(a)) fail(command, ": flag ", a, " given twice");
      seen_.insert(a);
      if (f->takes_value) {
        if (i + 1 >= argv.size()) fail(command, ": flag ", a, " needs a value");
        values_[a] = argv[++i];
      }
    }
  }
  bool has(const std::string& f) const { return seen_.count(f) > 0; }
  std::string get(const std::string& f) const {
    auto it = values_.find(f);
    if (it == values_.end()) fail("missing required flag ", f);
    return it->second;
  }
  std::string get_or(const std::string& f, const std::string& dflt) const { return has(f) ? get(f) : dflt; }

  long long integer(const std::string& f, long long lo, long long dflt) const {
    if (!has(f)) return dflt;
    const std::string v = get(f);
    long long x = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec != std::errc() || p != v.data() + v.size()) fail(f, ": \"", v, "\" is not an integer");
    if (x < lo) fail(f, ": ", x, " must be at least ", lo);
    return x;
  }
  long long required_integer(const std::string& f, long long lo) const {
    get(f);
    return integer(f, lo, 0);
  }
  double real(const std::string& f, double dflt) const {
    if (!has(f)) return dflt;
    const std::string v = get(f);
    double x = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec != std::errc() || p != v.data() + v.size() || !std::isfinite(x)) fail(f, ": \"", v, "\" is not a finite number");
    return x;
  }

 private:
  std::set<std::string> seen_;
  std::map<std::string, std::string> values_;
};

/// Loads a float32/float64 .npy as T with the given dim names; the flag and
/// file appear in every error.
template <class T>
einmoe::Tensor<T> load_float(const std::string& flag, const std::string& path, const std::vector<std::string>& names) {
  einmoe::NpyInfo info;
  try {
    info = einmoe::read_npy_info(path);
  } catch (const einmoe::error& e) {
    fail(flag, " ", path, ": ", e.what());
  }
  if (info.dtype != einmoe::DType::float32 && info.dtype != einmoe::DType::float64)
    fail(flag, " ", path, ": dtype ", einmoe::dtype_name(info.dtype), ", expected float32 or float64");
  if (info.sizes.size() != names.size()) {
    std::string want;
    for (const auto& n : names) want += (want.empty() ? "" : ",") + n;
    fail(flag, " ", path, ": rank ", info.sizes.size(), ", expected ", names.size(), " [", want, "]");
  }
  try {
    if (info.dtype == einmoe::DType::float32) return einmoe::cast<T>(einmoe::load_npy<float>(path, names));
    return einmoe::cast<T>(einmoe::load_npy<double>(path, names));
  } catch (const einmoe::error& e) {
    fail(flag, " ", path, ": ", e.what());
  }
}

/// Checks that `t` (loaded from flag/path) has exactly the sizes of `want`.
template <class T>
void expect_shape(const einmoe::Tensor<T>& t, const einmoe::Shape& want, const std::string& flag, const std::string& path) {
  if (t.shape() != want) fail(flag, " ", path, ": shape ", t.shape(), " does not match ", want);
}

/// Checks that every element is finite.
template <class T>
void expect_finite(const einmoe::Tensor<T>& t, const std::string& flag, const std::string& path) {
  for (einmoe::index_t i = 0; i < t.size(); ++i)
    if (!std::isfinite(t[i])) fail(flag, " ", path, ": element ", i, " is ", t[i]);
}

/// Output files, written all together or not at all: each goes to a
/// temporary file first; only when all are written are they renamed.
class Outputs {
 public:
  explicit Outputs(std::string dir) : dir_(std::move(dir)) {}
  template <class T>
  void add(const std::string& name, const einmoe::Tensor<T>& t) {
    std::ostringstream os;
    einmoe::write_npy(os, t);
    files_.push_back({name, os.str()});
  }
  void commit() const {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec || !fs::is_directory(dir_)) fail("--out ", dir_, ": cannot create directory");
    std::vector<std::string> tmps;
    auto cleanup = [&] {
      for (const auto& t : tmps) fs::remove(t, ec);
    };
    for (const auto& f : files_) {
      const std::string tmp = (fs::path(dir_) / (f.first + ".einmoe-tmp")).string();
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      tmps.push_back(tmp);
      out.write(f.second.data(), static_cast<std::streamsize>(f.second.size()));
      out.close();
      if (!out) {
        cleanup();
        fail("--out ", dir_, ": cannot write ", f.first);
      }
    }
    for (std::size_t i = 0; i < files_.size(); ++i) {
      fs::rename(tmps[i], fs::path(dir_) / files_[i].first, ec);
      if (ec) {
        cleanup();
        fail("--out ", dir_, ": cannot write ", files_[i].first);
      }
    }
  }

 private:
  std::string dir_;
  std::vector<std::pair<std::string, std::string>> files_;
};

}  // namespace cli
