// einmoe/io/npy.hpp - .npy load and save, with dim names attached on load.
//
//   auto x = einmoe::load_npy<float>("x.npy", {"group", "length", "model"});
//   einmoe::save_npy("y.npy", y);
//   einmoe::NpyInfo info = einmoe::read_npy_info("x.npy");   // dtype and sizes
//
// Supported: little-endian float32, float64, int32, int64 and bool, C order
// (format versions 1.0, 2.0 and 3.0). Anything else - another dtype, Fortran
// order, a big-endian file, a truncated file, a wrong rank - is an io_error
// naming the file. Saving writes a temporary file beside the target and
// renames it, so a failed save never leaves a partial file.
//
// Why not xt::load_npy: xtensor 0.24's reader needs the dtype at compile
// time, does not detect truncated files and throws untyped errors.
#pragma once

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
  index_t num_elements() const {
    index_t n = 1;
    for (index_t s : sizes) n *= s;
    return n;
  }
};

namespace detail {

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "einmoe's .npy I/O assumes a little-endian host");
#endif

inline std::size_t item_size(DType d) {
  switch (d) {
    case DType::float32: case DType::int32: return 4;
    case DType::float64: case DType::int64: return 8;
    default: return 1;
  }
}

/// The value of key `key` in the header dict, as raw text up to the next
/// top-level comma or closing brace.
inline std::string header_field(const std::string& h, const std::string& key, const std::string& src) {
  for (const char q : {'\'', '"'}) {
    const std::string k = std::string(1, q) + key + std::string(1, q);
    auto p = h.find(k);
    if (p == std::string::npos) continue;
    p = h.find(':', p + k.size());
    if (p == std::string::npos) break;
    ++p;
    while (p < h.size() && h[p] == ' ') ++p;
    std::size_t e = p;
    int depth = 0;
    while (e < h.size()) {
      const char c = h[e];
      if (c == '(') ++depth;
      if (c == ')') --depth;
      if (depth == 0 && (c == ',' || c == '}')) break;
      ++e;
    }
    if (depth == 0 && h[p] == '(') ++e;  // include the ')' of a tuple
    std::string v = h.substr(p, e - p);
    while (!v.empty() && (v.back() == ' ' || v.back() == ',')) v.pop_back();
    return v;
  }
  raise<io_error>("load_npy: ", src, ": header has no '", key, "' field");
}

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

  NpyInfo info;
  std::string descr = header_field(h, "descr", src);
  if (descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"')) descr = descr.substr(1, descr.size() - 2);
  if (descr == "<f4") info.dtype = DType::float32;
  else if (descr == "<f8") info.dtype = DType::float64;
  else if (descr == "<i4") info.dtype = DType::int32;
  else if (descr == "<i8") info.dtype = DType::int64;
  else if (descr == "|b1") info.dtype = DType::boolean;
  else if (!descr.empty() && descr[0] == '>')
    raise<io_error>("load_npy: ", src, ": big-endian data ('", descr, "') is not supported");
  else
    raise<io_error>("load_npy: ", src, ": dtype '", descr,
                    "' is not supported (float32, float64, int32, int64 or bool)");

  const std::string fortran = header_field(h, "fortran_order", src);
  if (fortran != "False" && fortran != "True")
    raise<io_error>("load_npy: ", src, ": bad fortran_order value '", fortran, "'");

  const std::string shape = header_field(h, "shape", src);
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')')
    raise<io_error>("load_npy: ", src, ": bad shape '", shape, "'");
  std::stringstream ss(shape.substr(1, shape.size() - 2));
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    const auto b = tok.find_first_not_of(' ');
    if (b == std::string::npos) continue;
    const auto e = tok.find_last_not_of(' ');
    tok = tok.substr(b, e - b + 1);
    if (tok.find_first_not_of("0123456789") != std::string::npos || tok.size() > 15)
      raise<io_error>("load_npy: ", src, ": bad shape '", shape, "'");
    info.sizes.push_back(static_cast<index_t>(std::stoll(tok)));
  }
  if (fortran == "True" && info.sizes.size() > 1)
    raise<io_error>("load_npy: ", src, ": Fortran-order arrays are not supported (save with C order)");
  return info;
}

/// Reads the elements after the header; checks the stream holds them all.
template <class T>
void read_npy_data(std::istream& in, const NpyInfo& info, Tensor<T>& out, const std::string& src) {
  const std::size_t n = static_cast<std::size_t>(info.num_elements());
  if (std::is_same<T, bool>::value) {
    std::vector<unsigned char> bytes(n);
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(n));
    if (!in && n > 0) raise<io_error>("load_npy: ", src, ": truncated data");
    for (std::size_t i = 0; i < n; ++i) out[static_cast<index_t>(i)] = bytes[i] != 0;
  } else {
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n * sizeof(T)));
    if (!in && n > 0) raise<io_error>("load_npy: ", src, ": truncated data");
  }
}

inline std::ifstream open_npy(const std::string& path, std::size_t* file_size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) raise<io_error>("load_npy: cannot open ", path);
  const auto end = in.tellg();
  if (end < 0) raise<io_error>("load_npy: cannot read ", path);
  *file_size = static_cast<std::size_t>(end);
  in.seekg(0);
  return in;
}

}  // namespace detail

/// The dtype and sizes a .npy file declares (reads only the header).
inline NpyInfo read_npy_info(const std::string& path) {
  std::size_t file_size = 0, off = 0;
  auto in = detail::open_npy(path, &file_size);
  return detail::parse_npy_header(in, path, &off);
}

/// Reads a .npy stream whose dtype must be T, naming its dims `names`
/// (one per axis). `src` names the stream in error messages.
template <class T>
Tensor<T> read_npy(std::istream& in, const std::vector<std::string>& names, const std::string& src,
                   std::size_t stream_size = std::numeric_limits<std::size_t>::max()) {
  std::size_t off = 0;
  const NpyInfo info = detail::parse_npy_header(in, src, &off);
  if (info.dtype != dtype_of<T>())
    detail::raise<io_error>("load_npy: ", src, " holds ", dtype_name(info.dtype), ", expected ",
                            dtype_name(dtype_of<T>()));
  if (names.size() != info.sizes.size())
    detail::raise<io_error>("load_npy: ", src, " has rank ", info.sizes.size(), ", expected ", names.size(),
                            " (", [&] {
                              std::string s;
                              for (const auto& n : names) s += (s.empty() ? "" : ",") + n;
                              return s;
                            }(), ")");
  // Never allocate more than the stream can hold.
  long double bytes = static_cast<long double>(detail::item_size(info.dtype));
  for (index_t s : info.sizes) bytes *= static_cast<long double>(s);
  if (bytes > static_cast<long double>(stream_size) - static_cast<long double>(off))
    detail::raise<io_error>("load_npy: ", src, ": truncated data");
  std::vector<Dim> dims;
  for (std::size_t i = 0; i < names.size(); ++i) dims.emplace_back(names[i], info.sizes[i]);
  Tensor<T> out(Shape(std::move(dims)), uninitialized);
  detail::read_npy_data(in, info, out, src);
  return out;
}

/// Loads a .npy file whose dtype must be T, naming its dims `names`.
template <class T>
Tensor<T> load_npy(const std::string& path, const std::vector<std::string>& names) {
  std::size_t file_size = 0;
  auto in = detail::open_npy(path, &file_size);
  return read_npy<T>(in, names, path, file_size);
}

/// Writes t as .npy (format 1.0, C order) to a stream.
template <class T>
void write_npy(std::ostream& out, const Tensor<T>& t) {
  std::string descr;
  switch (dtype_of<T>()) {
    case DType::float32: descr = "<f4"; break;
    case DType::float64: descr = "<f8"; break;
    case DType::int32: descr = "<i4"; break;
    case DType::int64: descr = "<i8"; break;
    default: descr = "|b1"; break;
  }
  std::string shape = "(";
  for (index_t i = 0; i < t.rank(); ++i) shape += std::to_string(t.shape()[i].size) + (t.rank() == 1 ? "," : i + 1 < t.rank() ? ", " : "");
  shape += ")";
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  const std::size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  if (h.size() > 65535) detail::raise<io_error>("save_npy: header too long");
  out.write("\x93NUMPY\x01\x00", 8);
  const unsigned char len[2] = {static_cast<unsigned char>(h.size() & 0xff), static_cast<unsigned char>(h.size() >> 8)};
  out.write(reinterpret_cast<const char*>(len), 2);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  if (std::is_same<T, bool>::value) {
    std::vector<char> bytes(static_cast<std::size_t>(t.size()));
    for (index_t i = 0; i < t.size(); ++i) bytes[static_cast<std::size_t>(i)] = t[i] ? 1 : 0;
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  } else if (t.size() > 0) {
    out.write(reinterpret_cast<const char*>(t.data()), static_cast<std::streamsize>(static_cast<std::size_t>(t.size()) * sizeof(T)));
  }
}

/// Saves t to `path` as .npy; written to a temporary file first and renamed,
/// so `path` is either complete or untouched.
template <class T>
void save_npy(const std::string& path, const Tensor<T>& t) {
  const std::string tmp = path + ".einmoe-tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) detail::raise<io_error>("save_npy: cannot write ", path);
    write_npy(out, t);
    out.flush();
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      detail::raise<io_error>("save_npy: failed writing ", path);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    detail::raise<io_error>("save_npy: cannot write ", path);
  }
}

}  // namespace einmoe
