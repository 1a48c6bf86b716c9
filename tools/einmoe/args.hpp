// tools/einmoe/args.hpp - the einmoe command's flag parsing, file loading and
// all-or-nothing output writing. Every problem is a CliError: one line,
// naming the flag or file, exit status 2.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <einmoe/io/npy.hpp>
#include <einmoe/ops/elementwise.hpp>

namespace cli {

struct CliError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// `msg` on one printable line: control and non-ASCII bytes (from flag
/// values, file names, library messages quoting file bytes) become \xNN.
inline std::string one_line(const std::string& msg) {
  return einmoe::escape_bytes(msg, msg.size(), /*escape_backslash=*/false);
}

template <class... A>
[[noreturn]] void fail(const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  throw CliError(one_line(os.str()));
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
  /// Every flag given with a value (flag -> value).
  const std::map<std::string, std::string>& values() const { return values_; }

  /// The integer value of flag f (dflt when absent), in [lo, hi].
  long long integer(const std::string& f, long long lo, long long dflt,
                    long long hi = std::numeric_limits<long long>::max()) const {
    if (!has(f)) return dflt;
    const std::string v = get(f);
    long long x = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec == std::errc::result_out_of_range) fail(f, ": ", v, " is out of range");
    if (ec != std::errc() || p != v.data() + v.size()) fail(f, ": \"", v, "\" is not an integer");
    if (x < lo) fail(f, ": ", x, " must be at least ", lo);
    if (x > hi) fail(f, ": ", x, " must be at most ", hi);
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
    if (ec != std::errc() || p != v.data() + v.size() || !std::isfinite(x))
      fail(f, ": \"", v, "\" is not a finite number");
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
void expect_shape(const einmoe::TensorView<const T>& t, const einmoe::Shape& want, const std::string& flag,
                  const std::string& path) {
  if (t.shape() != want) fail(flag, " ", path, ": shape ", t.shape(), " does not match ", want);
}

/// Checks that every element is finite.
template <class T>
void expect_finite(const einmoe::TensorView<const T>& t, const std::string& flag, const std::string& path) {
  for (einmoe::index_t i = 0; i < t.size(); ++i)
    if (!std::isfinite(t[i])) fail(flag, " ", path, ": element ", i, " is ", t[i]);
}

/// Output files, written all together or not at all: each goes to a
/// temporary file first; only when all are written are they renamed.
/// What kind of non-regular file sits at an output path (for messages).
inline const char* file_kind(const struct stat& st) {
  if (S_ISLNK(st.st_mode)) return "a symlink";
  if (S_ISDIR(st.st_mode)) return "a directory";
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) return "a device";
  if (S_ISFIFO(st.st_mode)) return "a FIFO";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  return "not a regular file";
}

/// All-or-nothing outputs: every file is written to an exclusive temporary
/// (mkstemp: O_EXCL, never through a symlink) beside its target, then all
/// are renamed into place; if a rename fails, the targets already replaced
/// get their old contents back. Refused before anything is written: an
/// output path that is a symlink, device, FIFO or other non-regular file,
/// an output directory that is not a real directory, and an output that is
/// also one of the command's input files.
class Outputs {
 public:
  /// Files named `name` inside the directory given by --out.
  explicit Outputs(const Args& a) : dir_(a.get("--out")), args_(&a) {}
  /// One file: the --out path itself (use add() once, with any name).
  static Outputs file(const Args& a) {
    Outputs o(a);
    o.single_ = true;
    return o;
  }
  template <class T>
  void add(const std::string& name, const einmoe::Tensor<T>& t) {
    std::ostringstream os;
    einmoe::write_npy(os, t);
    files_.push_back({name, os.str()});
  }
  /// A text file (e.g. stats.json), committed with the others.
  void add_text(const std::string& name, std::string text) { files_.push_back({name, std::move(text)}); }
  void commit() const {
    namespace fs = std::filesystem;
    std::error_code ec;
    struct stat st {};
    const fs::path dir = single_ ? fs::path(dir_).parent_path() : fs::path(dir_);
    if (!single_) {
      if (::lstat(dir_.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
        fail("--out ", dir_, ": is ", file_kind(st), ", not a directory");
    }
    std::vector<fs::path> targets;
    for (const auto& f : files_) targets.push_back(single_ ? fs::path(dir_) : dir / f.first);
    for (const auto& t : targets) {
      if (::lstat(t.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
        fail("--out ", t.string(), ": is ", file_kind(st), "; refusing to replace it");
      for (const auto& [flag, value] : args_->values())
        if (flag != "--out" && fs::exists(value, ec) && fs::equivalent(t, value, ec))
          fail("--out ", t.string(), ": is the input ", flag, " ", value, "; refusing to overwrite it");
    }
    if (!single_) {
      fs::create_directories(dir_, ec);
      if (ec || !fs::is_directory(dir_)) fail("--out ", dir_, ": cannot create directory");
    }
    const fs::path where = dir.empty() ? fs::path(".") : dir;
    std::vector<std::string> tmps, backups;
    auto cleanup = [&] {
      for (const auto& t : tmps) ::unlink(t.c_str());
    };
    for (std::size_t i = 0; i < files_.size(); ++i) {
      std::string tmp = (where / ("." + targets[i].filename().string() + ".einmoe-XXXXXX")).string();
      const int fd = ::mkstemp(tmp.data());
      if (fd < 0) {
        cleanup();
        fail("--out ", targets[i].string(), ": cannot create a temporary file in ", where.string());
      }
      tmps.push_back(tmp);
      const mode_t mask = ::umask(0);
      ::umask(mask);
      bool ok = ::fchmod(fd, 0666 & ~mask) == 0;
      const std::string& bytes = files_[i].second;
      for (std::size_t at = 0; ok && at < bytes.size();) {
        const ssize_t n = ::write(fd, bytes.data() + at, bytes.size() - at);
        if (n <= 0) ok = false;
        else at += static_cast<std::size_t>(n);
      }
      ok = ::close(fd) == 0 && ok;
      if (!ok) {
        cleanup();
        fail("--out ", targets[i].string(), ": cannot write");
      }
    }
    // Old outputs are kept under exclusive names until every new one is in.
    std::vector<bool> had(files_.size(), false);
    auto restore = [&](std::size_t upto) {
      for (std::size_t j = 0; j < upto; ++j)
        if (had[j]) ::rename(backups[j].c_str(), targets[j].c_str());
        else ::unlink(targets[j].c_str());
    };
    for (std::size_t i = 0; i < files_.size(); ++i) {
      std::string backup = (where / ("." + targets[i].filename().string() + ".einmoe-old-XXXXXX")).string();
      const int fd = ::mkstemp(backup.data());
      if (fd >= 0) ::close(fd);
      backups.push_back(backup);
      had[i] = fd >= 0 && ::rename(targets[i].c_str(), backup.c_str()) == 0;
      if (fd >= 0 && !had[i]) ::unlink(backup.c_str());
      if (::rename(tmps[i].c_str(), targets[i].c_str()) != 0) {
        if (had[i]) ::rename(backup.c_str(), targets[i].c_str());
        restore(i);
        cleanup();
        fail("--out ", targets[i].string(), ": cannot write");
      }
    }
    for (std::size_t i = 0; i < files_.size(); ++i)
      if (had[i]) ::unlink(backups[i].c_str());
  }

 private:
  std::string dir_;
  const Args* args_;
  bool single_ = false;
  std::vector<std::pair<std::string, std::string>> files_;
};

}  // namespace cli
