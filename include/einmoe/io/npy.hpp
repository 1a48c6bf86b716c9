// einmoe/io/npy.hpp - .npy load and save, with dim names attached on load.
//
// Example:
//   auto x = einmoe::load_npy<float>(dir + "/x.npy", {"group", "length", "model"});
//   einmoe::save_npy(dir + "/y.npy", y);
//   einmoe::NpyInfo info = einmoe::read_npy_info(dir + "/x.npy");   // dtype and sizes
//
// Supported: little-endian float32, float64, int32, int64 and bool, C order
// (format versions 1.0, 2.0 and 3.0). Anything else - another dtype, Fortran
// order, a big-endian file, a truncated file, a wrong rank - is an io_error
// naming the file, its header bytes escaped. Saving writes an exclusive
// temporary file (mkstemp) beside the target and renames it, so a failed save
// never leaves a partial file, and refuses to replace anything but a regular
// file.
//
// Why not xt::load_npy: xtensor 0.24's reader needs the dtype at compile
// time, does not detect truncated files and throws untyped errors.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <istream>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "einmoe/core/checked.hpp"
#include "einmoe/core/tensor.hpp"

namespace einmoe {

/// Element types a .npy file may hold.
enum class DType { float32, float64, int32, int64, boolean };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::int32: return "int32";
    case DType::int64: return "int64";
    default: return "bool";
  }
}

template <class T>
constexpr DType dtype_of() {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value ||
                    std::is_same<T, std::int32_t>::value || std::is_same<T, std::int64_t>::value ||
                    std::is_same<T, bool>::value,
                "npy: element type must be float, double, int32_t, int64_t or bool");
  if (std::is_same<T, float>::value) return DType::float32;
  if (std::is_same<T, double>::value) return DType::float64;
  if (std::is_same<T, std::int32_t>::value) return DType::int32;
  if (std::is_same<T, std::int64_t>::value) return DType::int64;
  return DType::boolean;
}

/// What a .npy header says.
struct NpyInfo {
  DType dtype = DType::float32;
  std::vector<index_t> sizes;
  /// The product of sizes; shape_error if it overflows.
  index_t num_elements() const {
    index_t n = 1;
    for (index_t s : sizes) n = detail::mul_size(n, s, "npy shape");
    return n;
  }
};

namespace detail {

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "einmoe's .npy I/O assumes a little-endian host");
#endif

inline std::size_t item_size(DType d) {
  switch (d) {
    case DType::float32:
    case DType::int32: return 4;
    case DType::float64:
    case DType::int64: return 8;
    default: return 1;
  }
}

/// A strict reader of the header dict numpy writes: a Python dict literal
/// with exactly the keys 'descr' (a string), 'fortran_order' (True or False)
/// and 'shape' (a tuple of non-negative decimal ints), in any order, each
/// once, an optional trailing comma, then spaces and one newline. Anything
/// else - another key, a duplicate, a shape numpy would not read as a tuple
/// such as (3) - is an io_error, so a file never loads with another shape
/// than numpy gives it.
class NpyHeaderParser {
 public:
  NpyHeaderParser(const std::string& h, const std::string& src) : h_(h), src_(src) {}

  NpyInfo parse() {
    NpyInfo info;
    bool has_descr = false, has_fortran = false, has_shape = false, fortran = false;
    std::string descr;
    skip_ws();
    expect('{');
    skip_ws();
    while (peek() != '}') {
      const std::string key = string_literal("a key");
      skip_ws();
      expect(':');
      skip_ws();
      auto once = [&](bool& seen) {
        if (seen) fail("duplicate key '", escape_bytes(key), "'");
        seen = true;
      };
      if (key == "descr") {
        once(has_descr);
        descr = string_literal("the descr value");
      } else if (key == "fortran_order") {
        once(has_fortran);
        if (h_.compare(p_, 4, "True") == 0) fortran = true, p_ += 4;
        else if (h_.compare(p_, 5, "False") == 0) fortran = false, p_ += 5;
        else fail("fortran_order must be True or False");
      } else if (key == "shape") {
        once(has_shape);
        info.sizes = shape_tuple();
      } else {
        fail("unexpected key '", escape_bytes(key), "' (numpy writes descr, fortran_order, shape)");
      }
      skip_ws();
      if (peek() == ',') {
        ++p_;
        skip_ws();
      } else if (peek() != '}') {
        fail("expected ',' or '}' at byte ", p_);
      }
    }
    ++p_;
    while (p_ < h_.size() && (h_[p_] == ' ' || h_[p_] == '\n')) ++p_;
    if (p_ != h_.size()) fail("unexpected bytes after the header dict at byte ", p_);
    if (!has_descr) fail("header has no 'descr' field");
    if (!has_fortran) fail("header has no 'fortran_order' field");
    if (!has_shape) fail("header has no 'shape' field");

    if (descr == "<f4") info.dtype = DType::float32;
    else if (descr == "<f8") info.dtype = DType::float64;
    else if (descr == "<i4") info.dtype = DType::int32;
    else if (descr == "<i8") info.dtype = DType::int64;
    else if (descr == "|b1") info.dtype = DType::boolean;
    else if (!descr.empty() && descr[0] == '>') fail("big-endian data ('", escape_bytes(descr), "') is not supported");
    else fail("dtype '", escape_bytes(descr), "' is not supported (float32, float64, int32, int64 or bool)");
    if (fortran && info.sizes.size() > 1) fail("Fortran-order arrays are not supported (save with C order)");
    return info;
  }

 private:
  template <class... A>
  [[noreturn]] void fail(const A&... a) const {
    raise<io_error>("load_npy: ", src_, ": ", a...);
  }
  char peek() const { return p_ < h_.size() ? h_[p_] : '\0'; }
  void skip_ws() {
    while (p_ < h_.size() && h_[p_] == ' ') ++p_;
  }
  void expect(char c) {
    if (peek() != c)
      fail("bad header: expected '", std::string(1, c), "' at byte ", p_, " in \"", escape_bytes(h_), "\"");
    ++p_;
  }
  // A quoted string without escapes or newlines ('...' or "...").
  std::string string_literal(const char* what) {
    const char q = peek();
    if (q != '\'' && q != '"') fail("bad header: expected ", what, " (a quoted string) at byte ", p_);
    const std::size_t b = ++p_;
    while (p_ < h_.size() && h_[p_] != q) {
      if (h_[p_] == '\\' || h_[p_] == '\n') fail("bad header: unsupported string at byte ", b - 1);
      ++p_;
    }
    if (p_ >= h_.size()) fail("bad header: unterminated string at byte ", b - 1);
    return h_.substr(b, p_++ - b);
  }
  std::vector<index_t> shape_tuple() {
    const std::size_t b = p_;
    auto bad = [&]() -> std::vector<index_t> {
      std::size_t e = h_.find(')', b);
      e = e == std::string::npos ? h_.size() : e + 1;
      fail("bad shape '", escape_bytes(h_.substr(b, e - b)), "' (a tuple of non-negative ints)");
    };
    if (peek() != '(') return bad();
    ++p_;
    std::vector<index_t> sizes;
    bool comma = false;  // a one-element tuple needs its comma: (3) is an int
    skip_ws();
    while (peek() != ')') {
      const std::size_t d = p_;
      while (p_ < h_.size() && h_[p_] >= '0' && h_[p_] <= '9') ++p_;
      // Python has no leading zeros in decimal ints (except 0 itself).
      if (p_ == d || p_ - d > 18 || (p_ - d > 1 && h_[d] == '0')) return bad();
      sizes.push_back(static_cast<index_t>(std::stoll(h_.substr(d, p_ - d))));
      skip_ws();
      comma = false;
      if (peek() == ',') {
        ++p_, comma = true;
        skip_ws();
      } else if (peek() != ')') {
        return bad();
      }
    }
    ++p_;
    if (sizes.size() == 1 && !comma) return bad();
    return sizes;
  }

  const std::string& h_;
  const std::string& src_;
  std::size_t p_ = 0;
};

inline NpyInfo parse_npy_header(std::istream& in, const std::string& src, std::size_t* data_offset) {
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) raise<io_error>("load_npy: ", src, ": not a .npy file");
  const int major = static_cast<unsigned char>(magic[6]);
  std::size_t hlen = 0;
  std::size_t pre = 10;
  if (major == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    hlen = static_cast<std::size_t>(b[0]) | (static_cast<std::size_t>(b[1]) << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    hlen = static_cast<std::size_t>(b[0]) | (static_cast<std::size_t>(b[1]) << 8) |
           (static_cast<std::size_t>(b[2]) << 16) | (static_cast<std::size_t>(b[3]) << 24);
    pre = 12;
  } else {
    raise<io_error>("load_npy: ", src, ": unsupported .npy format version ", major);
  }
  if (!in || hlen > (std::size_t{1} << 24)) raise<io_error>("load_npy: ", src, ": truncated or corrupt header");
  std::string h(hlen, '\0');
  in.read(&h[0], static_cast<std::streamsize>(hlen));
  if (!in) raise<io_error>("load_npy: ", src, ": truncated header");
  *data_offset = pre + hlen;
  NpyInfo info = NpyHeaderParser(h, src).parse();
  index_t n = 1;
  for (index_t s : info.sizes) n = mul_size(n, s, "load_npy: ", src, ": shape");
  mul_size(n, static_cast<index_t>(item_size(info.dtype)), "load_npy: ", src, ": data size");
  return info;
}

/// Reads the elements after the header; checks the stream holds them all.
/// `bytes_left` is how many bytes the stream can still deliver, or
/// SIZE_MAX when unknown: then the data is read in chunks of at most 16 MiB
/// and the tensor allocated only once every byte has arrived, so a header
/// that claims more than follows never allocates what it claims.
template <class T>
Tensor<T> read_npy_data(std::istream& in, const NpyInfo& info, Shape shape, const std::string& src,
                        std::size_t bytes_left) {
  const std::size_t n = static_cast<std::size_t>(info.num_elements());
  const std::size_t item = item_size(info.dtype);
  const std::size_t want = n * item;  // checked by parse_npy_header
  if (bytes_left != std::numeric_limits<std::size_t>::max() && want > bytes_left)
    raise<io_error>("load_npy: ", src, ": truncated data (", want, " bytes declared, ", bytes_left, " follow)");
  std::vector<char> staged;  // used only when the stream's size is unknown
  if (bytes_left == std::numeric_limits<std::size_t>::max()) {
    constexpr std::size_t chunk = std::size_t{16} << 20;
    while (staged.size() < want) {
      const std::size_t at = staged.size();
      const std::size_t step = std::min(chunk, want - at);
      staged.resize(at + step);
      in.read(staged.data() + at, static_cast<std::streamsize>(step));
      if (static_cast<std::size_t>(in.gcount()) != step)
        raise<io_error>("load_npy: ", src, ": truncated data (", want, " bytes declared, ",
                        at + static_cast<std::size_t>(in.gcount()), " follow)");
    }
  }
  Tensor<T> out(std::move(shape), uninitialized);
  if (std::is_same<T, bool>::value) {
    std::vector<char> bytes;
    const char* src_bytes = staged.data();
    if (staged.empty() && n > 0) {
      bytes.resize(n);
      in.read(bytes.data(), static_cast<std::streamsize>(n));
      if (!in) raise<io_error>("load_npy: ", src, ": truncated data");
      src_bytes = bytes.data();
    }
    for (std::size_t i = 0; i < n; ++i) out[static_cast<index_t>(i)] = src_bytes[i] != 0;
  } else if (n > 0) {
    if (!staged.empty()) {
      std::memcpy(static_cast<void*>(out.data()), staged.data(), want);
    } else {
      in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(want));
      if (!in) raise<io_error>("load_npy: ", src, ": truncated data");
    }
  }
  return out;
}

/// Writes to `path` through an exclusive temporary and a rename (see
/// save_npy): `fill(sink)` hands its bytes to sink(const char*, size_t) and
/// returns false on failure. `who` starts error messages.
template <class Fill>
void replace_file(const std::string& path, const char* who, Fill&& fill) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    raise<io_error>(who, ": ", path, ": not a regular file (",
                    S_ISLNK(st.st_mode)   ? "a symlink"
                    : S_ISDIR(st.st_mode) ? "a directory"
                                          : "a device, FIFO or socket",
                    "); refusing to replace it");
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp = dir + "/." + base + ".einmoe-XXXXXX";
  const int fd = ::mkstemp(&tmp[0]);
  if (fd < 0) raise<io_error>(who, ": cannot write ", path, " (cannot create a temporary file in ", dir, ")");
  const mode_t mask = ::umask(0);  // mkstemp makes 0600; give the usual mode
  ::umask(mask);
  bool ok = ::fchmod(fd, 0666 & ~mask) == 0 && fill([fd](const char* p, std::size_t n) {
              for (std::size_t at = 0; at < n;) {
                const ssize_t w = ::write(fd, p + at, n - at);
                if (w <= 0) return false;
                at += static_cast<std::size_t>(w);
              }
              return true;
            });
  ok = ::close(fd) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    raise<io_error>(who, ": ", ok ? "cannot replace " : "failed writing ", path);
  }
}

inline std::ifstream open_npy(const std::string& path, std::size_t* file_size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) raise_cannot_open(path, "load_npy: cannot open ", path);
  const auto end = in.tellg();
  if (end < 0) raise<io_error>("load_npy: cannot read ", path);
  *file_size = static_cast<std::size_t>(end);
  in.seekg(0);
  return in;
}

}  // namespace detail

/// The dtype and sizes a .npy file declares (reads only the header).
/// Throws not_found_error if the file is missing, io_error if it cannot be read or
/// its header is malformed.
inline NpyInfo read_npy_info(const std::string& path) {
  std::size_t file_size = 0, off = 0;
  auto in = detail::open_npy(path, &file_size);
  return detail::parse_npy_header(in, path, &off);
}

/// Reads a .npy stream whose dtype must be T, naming its dims `names`
/// (one per axis). `src` names the stream in error messages; `stream_size`
/// is the stream's total size when known (load_npy passes the file's). With
/// or without it, nothing larger than the bytes that actually follow the
/// header is ever allocated.
/// Throws io_error for a malformed or truncated stream, a dtype other than T's, or a
/// rank other than names' count; shape_error for repeated names.
template <class T>
Tensor<T> read_npy(std::istream& in, const std::vector<std::string>& names, const std::string& src,
                   std::size_t stream_size = std::numeric_limits<std::size_t>::max()) {
  std::size_t off = 0;
  const NpyInfo info = detail::parse_npy_header(in, src, &off);
  if (info.dtype != dtype_of<T>())
    detail::raise<io_error>("load_npy: ", src, " holds ", dtype_name(info.dtype), ", expected ",
                            dtype_name(dtype_of<T>()));
  if (names.size() != info.sizes.size())
    detail::raise<io_error>(
        "load_npy: ", src, " has rank ", info.sizes.size(), ", expected ", names.size(), " (",
        [&] {
          std::string s;
          for (const auto& n : names) s += (s.empty() ? "" : ",") + n;
          return s;
        }(),
        ")");
  std::vector<Dim> dims;
  for (std::size_t i = 0; i < names.size(); ++i) dims.emplace_back(names[i], info.sizes[i]);
  Shape shape(std::move(dims));
  std::size_t left = std::numeric_limits<std::size_t>::max();
  if (stream_size != left) {
    left = stream_size >= off ? stream_size - off : 0;
  } else {  // a seekable stream tells how much follows
    const auto here = in.tellg();
    if (here >= 0) {
      if (in.seekg(0, std::ios::end)) {
        const auto end = in.tellg();
        if (end >= here) left = static_cast<std::size_t>(end - here);
      }
      in.clear(in.rdstate() & ~std::ios::failbit);
      in.seekg(here);
      if (!in) left = std::numeric_limits<std::size_t>::max();
    }
    in.clear(in.rdstate() & ~std::ios::failbit);
  }
  return detail::read_npy_data<T>(in, info, std::move(shape), src, left);
}

/// Loads a .npy file whose dtype must be T, naming its dims `names`: axis i
/// becomes [names[i]=the file's size i].
/// Throws not_found_error if the file is missing, and as read_npy.
template <class T>
Tensor<T> load_npy(const std::string& path, const std::vector<std::string>& names) {
  std::size_t file_size = 0;
  auto in = detail::open_npy(path, &file_size);
  return read_npy<T>(in, names, path, file_size);
}

namespace detail {

/// The magic, length and header dict of t as .npy format 1.0 (C order).
template <class T>
std::string npy_preamble(const TensorView<const T>& t) {
  std::string descr;
  switch (dtype_of<T>()) {
    case DType::float32: descr = "<f4"; break;
    case DType::float64: descr = "<f8"; break;
    case DType::int32: descr = "<i4"; break;
    case DType::int64: descr = "<i8"; break;
    default: descr = "|b1"; break;
  }
  std::string shape = "(";
  for (index_t i = 0; i < t.rank(); ++i)
    shape += std::to_string(t.shape()[i].size) + (t.rank() == 1 ? "," : i + 1 < t.rank() ? ", " : "");
  shape += ")";
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  const std::size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  if (h.size() > 65535) raise<io_error>("save_npy: header too long");
  const char len[2] = {static_cast<char>(h.size() & 0xff), static_cast<char>(h.size() >> 8)};
  return std::string("\x93NUMPY\x01\x00", 8) + std::string(len, 2) + h;
}

/// Hands t's .npy bytes to `sink(const char*, std::size_t)` (returns false
/// to stop): the preamble, then the data straight from t's buffer (bools in
/// 64 KiB chunks of 0/1 bytes).
template <class T, class Sink>
bool emit_npy(const TensorView<const T>& t, Sink&& sink) {
  const std::string pre = npy_preamble(t);
  if (!sink(pre.data(), pre.size())) return false;
  if (std::is_same<T, bool>::value) {
    char buf[1 << 16];
    for (index_t i = 0; i < t.size();) {
      std::size_t k = 0;
      for (; k < sizeof(buf) && i < t.size(); ++k, ++i) buf[k] = t[i] ? 1 : 0;
      if (!sink(buf, k)) return false;
    }
    return true;
  }
  return t.size() == 0 || sink(reinterpret_cast<const char*>(t.data()), static_cast<std::size_t>(t.size()) * sizeof(T));
}

}  // namespace detail

/// Writes t as .npy (format 1.0, C order) to a stream: any [dims] (the names
/// are not stored).
/// Throws io_error if the stream fails or the header would be too long.
template <class T>
void write_npy(std::ostream& out, const TensorView<const T>& t) {
  detail::emit_npy(t, [&](const char* p, std::size_t n) {
    out.write(p, static_cast<std::streamsize>(n));
    return static_cast<bool>(out);
  });
}

/// Saves t to `path` as .npy, all or nothing: the bytes go to a new
/// temporary file with an unpredictable name beside `path` (mkstemp:
/// created exclusively, never through a symlink), which is then renamed
/// onto `path`. `path` must be a regular file or not exist: a symlink,
/// directory, device or FIFO there is an io_error and is left untouched.
template <class T>
void save_npy(const std::string& path, const TensorView<const T>& t) {
  detail::replace_file(path, "save_npy", [&](auto&& sink) { return detail::emit_npy(t, sink); });
}

}  // namespace einmoe
