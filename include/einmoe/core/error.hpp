// einmoe/core/error.hpp - the exception hierarchy.
//
// Every misuse of the library throws one of these; the checks behind them stay
// on under NDEBUG. Messages name the operation first, then the dims and sizes
// involved, e.g.  einsum: dim "experts" has size 16 in input 0 but 8 in input 1
//
// Which type means what (CONTRIBUTING.md has the rule with examples):
//   shape_error      a dim is missing, repeated, or of the wrong size; an
//                    index out of range; a size that overflows 64 bits
//   value_error      an argument's value is outside its domain (k = 0, a NaN
//                    logit, an unknown option name)
//   resource_error   a request needs more memory than the machine has
//   io_error         a file cannot be read or written, or is malformed
//   not_found_error  (an io_error) a named file, tensor or config key is missing
//   mpi_error        an MPI call failed, or ranks disagree
// All derive from einmoe::error (a std::runtime_error).
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace einmoe {

/// Base of every exception einmoe throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A dim is missing, duplicated, or has the wrong size for the operation.
class shape_error : public error {
 public:
  using error::error;
};

/// An argument's value is out of its domain (negative capacity, NaN logits...).
class value_error : public error {
 public:
  using error::error;
};

/// A request needs more memory than this machine has (checked before
/// anything is allocated; the message gives the size).
class resource_error : public error {
 public:
  using error::error;
};

/// A file could not be read or written, or is not what it claims to be.
class io_error : public error {
 public:
  using error::error;
};

/// Something asked for by name does not exist: a file, a tensor in a
/// checkpoint, a key of a model's config.json.
class not_found_error : public io_error {
 public:
  using io_error::io_error;
};

/// An MPI call failed, or the ranks of a collective call disagree.
class mpi_error : public error {
 public:
  using error::error;
};

/// `s` with every byte outside printable ASCII written as \xNN, so a
/// message quoting a file's bytes (or a user's flag) stays one readable
/// line; at most max_len bytes of it, then "...". Backslashes are escaped
/// too, unless `s` is a message whose quoted bytes are already escaped
/// (escape_backslash false): escape_bytes("a\nb") == "a\\x0ab". Never throws
/// but std::bad_alloc.
inline std::string escape_bytes(const std::string& s, std::size_t max_len = 80, bool escape_backslash = true) {
  static const char hex[] = "0123456789abcdef";
  std::string r;
  for (std::size_t i = 0; i < s.size() && i < max_len; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && (c != '\\' || !escape_backslash)) {
      r += static_cast<char>(c);
    } else {
      r += "\\x";
      r += hex[c >> 4];
      r += hex[c & 15];
    }
  }
  if (s.size() > max_len) r += "...";
  return r;
}

namespace detail {

template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <class E, class... Args>
[[noreturn]] void raise(Args&&... args) {
  throw E(cat(std::forward<Args>(args)...));
}

/// The one rule for a file that cannot be opened: not_found_error when
/// nothing exists at `path`, io_error otherwise (permissions, a directory...).
/// The message is `what...` followed by the reason.
template <class... Args>
[[noreturn]] void raise_cannot_open(const std::string& path, const Args&... what) {
  const int err = errno;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec) && !ec) raise<not_found_error>(what..., " (no such file)");
  raise<io_error>(what..., " (", err ? std::strerror(err) : "cannot be opened", ")");
}

}  // namespace detail
}  // namespace einmoe
