// einmoe/checkpoints/safetensors.hpp - reading .safetensors files, memory-
// mapped, with every header field validated; writing F32 ones.
//
// Example:
//   SafetensorsFile f(path);                     // e.g. "model.safetensors", stored in BF16
//   TensorView<const bfloat16> w = f.tensor<bfloat16>("model.layers.0.mlp.gate.weight", {"experts", "model"});  // the mapping
//   TensorView<const float> w32 = f.tensor<float>("model.layers.0.mlp.gate.weight", {"experts", "model"});     // a converted copy
//
// The format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON {name: {"dtype", "shape",
// "data_offsets": [begin, end]}, "__metadata__": {string: string}}, then the
// data; offsets are relative to the data, which the tensors must cover
// exactly, in order, without holes or overlaps.
//
// The file is mapped read-only once. tensor<T>() returns a read-only view of
// the mapping (no copy) when the stored dtype is T's (F32 for float, BF16 for
// bfloat16) and the data is aligned for T; otherwise (F16 or BF16 read as
// float, anything read as double, misaligned data) a converted copy. Views
// keep the mapping alive (it is released when the file object and every view
// are gone). Errors name the file and the tensor: io_error for a file that is
// not valid safetensors, value_error for a missing tensor or a dtype that
// cannot be read as T, shape_error for a rank that does not match the names.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "einmoe/core/bfloat16.hpp"
#include "einmoe/core/checked.hpp"
#include "einmoe/core/error.hpp"
#include "einmoe/core/tensor.hpp"

namespace einmoe {

/// One tensor's header entry. Offsets are relative to the start of the data.
struct SafetensorsEntry {
  std::string dtype;           ///< "F32", "BF16", "F16", "F64", "I64", ...
  std::vector<index_t> shape;  ///< HF order (row-major)
  std::size_t begin = 0, end = 0;
};

namespace detail {

/// A read-only private mapping of a whole file.
class FileMap {
 public:
  explicit FileMap(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) raise_cannot_open(path, path, ": cannot open");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      raise<io_error>(path, ": not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        raise<io_error>(path, ": cannot map (", std::strerror(errno), ")");
      }
      data_ = static_cast<const unsigned char*>(p);
    }
    ::close(fd);
  }
  ~FileMap() {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  FileMap(const FileMap&) = delete;
  FileMap& operator=(const FileMap&) = delete;
  const unsigned char* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Bytes per element of a safetensors dtype; 0 if unknown.
inline std::size_t safetensors_dtype_bytes(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) man <<= 1, --exp;
      bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace detail

/// A memory-mapped .safetensors file (see the file comment).
class SafetensorsFile {
 public:
  /// Maps and validates the file; io_error naming it (and the tensor) if it
  /// is not valid safetensors.
  explicit SafetensorsFile(const std::string& path) : map_(std::make_shared<detail::FileMap>(path)) {
    const auto& m = *map_;
    // (names and JSON come from the file: the message escapes their bytes)
    auto bad = [&](auto&&... why) {
      detail::raise<io_error>(escape_bytes(detail::cat(path, ": not a valid safetensors file: ", why...), 1000));
    };
    if (m.size() < 8) bad("shorter than its 8-byte header length");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | m.data()[i];
    if (n > m.size() - 8) bad("header length ", n, " exceeds the file's ", m.size() - 8, " bytes after it");
    if (n > (std::uint64_t{100} << 20)) bad("header length ", n, " exceeds 100 MB");
    data_offset_ = 8 + static_cast<std::size_t>(n);
    const std::size_t data_size = m.size() - data_offset_;
    nlohmann::json h;
    try {
      h = nlohmann::json::parse(m.data() + 8, m.data() + 8 + n);
    } catch (const nlohmann::json::exception& e) {
      bad("header is not JSON (", e.what(), ")");
    }
    if (!h.is_object()) bad("header is not a JSON object");
    std::vector<std::pair<std::size_t, std::string>> order;
    for (auto it = h.begin(); it != h.end(); ++it) {
      const std::string& name = it.key();
      if (name == "__metadata__") {
        if (!it->is_object()) bad("__metadata__ is not an object");
        for (auto mt = it->begin(); mt != it->end(); ++mt)
          if (!mt->is_string()) bad("__metadata__ value \"", mt.key(), "\" is not a string");
        continue;
      }
      const auto& v = *it;
      auto tbad = [&](auto&&... why) { bad("tensor \"", name, "\": ", why...); };
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
        tbad("needs dtype, shape and data_offsets");
      SafetensorsEntry e;
      if (!v["dtype"].is_string()) tbad("dtype is not a string");
      e.dtype = v["dtype"].get<std::string>();
      const std::size_t eb = detail::safetensors_dtype_bytes(e.dtype);
      if (eb == 0) tbad("unknown dtype \"", e.dtype, "\"");
      if (!v["shape"].is_array()) tbad("shape is not an array");
      std::size_t count = 1;
      for (const auto& d : v["shape"]) {
        if (!d.is_number_unsigned())
          tbad("shape ", v["shape"].dump(), " holds a value that is not a non-negative integer");
        const auto s = d.get<std::uint64_t>();
        if (s > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max())) tbad("dim ", s, " is too large");
        e.shape.push_back(static_cast<index_t>(s));
        if (s != 0 && count > std::numeric_limits<std::size_t>::max() / s)
          tbad("shape ", v["shape"].dump(), " overflows");
        count *= static_cast<std::size_t>(s);
      }
      const auto& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        tbad("data_offsets is not [begin, end]");
      const auto b = off[0].get<std::uint64_t>(), en = off[1].get<std::uint64_t>();
      if (b > en) tbad("data_offsets [", b, ", ", en, "] run backwards");
      if (en > data_size) tbad("data_offsets end ", en, " is past the file's ", data_size, " data bytes");
      e.begin = static_cast<std::size_t>(b), e.end = static_cast<std::size_t>(en);
      if (count > std::numeric_limits<std::size_t>::max() / eb || e.end - e.begin != count * eb)
        tbad("data_offsets [", b, ", ", en, "] hold ", en - b, " bytes, but ", e.dtype, " ", v["shape"].dump(),
             " needs ", count, " x ", eb);
      order.emplace_back(e.begin, name);
      entries_.emplace(name, std::move(e));
    }
    // The tensors cover the data exactly: in offset order, each starts where
    // the previous one ended (no overlap, no hole), the last ends at the end.
    std::sort(order.begin(), order.end());
    std::size_t at = 0;
    for (const auto& o : order) {
      const auto& e = entries_.at(o.second);
      if (e.begin < at) bad("tensor \"", o.second, "\" overlaps the tensor before it");
      if (e.begin > at) bad("a hole of ", e.begin - at, " bytes before tensor \"", o.second, "\"");
      at = e.end;
    }
    if (at != data_size) bad(data_size - at, " bytes after the last tensor's data");
  }

  const std::string& path() const { return map_->path(); }
  bool has(const std::string& name) const { return entries_.count(name) > 0; }
  /// The entry of `name`; not_found_error naming the file and tensor if absent.
  const SafetensorsEntry& entry(const std::string& name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) detail::raise<not_found_error>(path(), ": no tensor \"", name, "\"");
    return it->second;
  }
  /// Tensor names, sorted.
  /// Throws nothing but std::bad_alloc.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : entries_) out.push_back(kv.first);
    return out;
  }

  /// The tensor `name` with one dim name per axis, as a read-only view that
  /// keeps what it reads alive: the file's mapping itself when the stored
  /// dtype is T and aligned, else a converted copy (see the file comment).
  /// T is float, double or bfloat16. Shape: [dims[0]=stored size 0, ...].
  /// Throws not_found_error for a missing tensor, shape_error for a rank
  /// other than dims.size(), value_error for a dtype T cannot hold.
  template <class T>
  TensorView<const T> tensor(const std::string& name, const std::vector<std::string>& dims) const {
    static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value || std::is_same<T, bfloat16>::value,
                  "SafetensorsFile::tensor<float, double or bfloat16>");
    const SafetensorsEntry& e = entry(name);
    if (dims.size() != e.shape.size())
      detail::raise<shape_error>(path(), ": tensor \"", name, "\" has rank ", e.shape.size(), ", expected ",
                                 dims.size());
    std::vector<Dim> ds;
    for (std::size_t i = 0; i < dims.size(); ++i) ds.emplace_back(dims[i], e.shape[i]);
    const Shape shape(ds);
    const unsigned char* p = map_->data() ? map_->data() + data_offset_ + e.begin : nullptr;
    const std::size_t count = static_cast<std::size_t>(shape.num_elements());
    const bool f32 = e.dtype == "F32", bf16 = e.dtype == "BF16", f16 = e.dtype == "F16", f64 = e.dtype == "F64";
    if (std::is_same<T, bfloat16>::value ? !bf16 : !(f32 || bf16 || f16 || f64))
      detail::raise<value_error>(
          path(), ": tensor \"", name, "\" is ", e.dtype, ", which cannot be read as ",
          std::is_same<T, bfloat16>::value ? "bfloat16 (BF16 only)" : "floating point (F32, BF16, F16, F64)");
    const bool same = (std::is_same<T, float>::value && f32) || (std::is_same<T, bfloat16>::value && bf16) ||
                      (std::is_same<T, double>::value && f64);
    if (same && count > 0 && reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0)
      return TensorView<const T>(reinterpret_cast<const T*>(p), shape, map_);
    Tensor<T> out(shape, uninitialized);
    for (std::size_t i = 0; i < count; ++i) {
      const unsigned char* q = p + i * detail::safetensors_dtype_bytes(e.dtype);
      double v;
      if (f32) {
        float f;
        std::memcpy(&f, q, 4);
        v = f;
      } else if (f64) {
        std::memcpy(&v, q, 8);
      } else {
        std::uint16_t b;
        std::memcpy(&b, q, 2);
        v = bf16 ? static_cast<double>(static_cast<float>(bfloat16::from_bits(b))) : detail::half_to_float(b);
      }
      if constexpr (std::is_same<T, bfloat16>::value) {
        std::uint16_t b;
        std::memcpy(&b, q, 2);
        out.data()[i] = bfloat16::from_bits(b);
        (void)v;
      } else {
        out.data()[i] = static_cast<T>(v);
      }
    }
    return shared_view(std::move(out));
  }

  /// Whether `p` points into the file's mapping (a zero-copy tensor()).
  /// Never throws.
  bool in_mapping(const void* p) const {
    const auto* q = static_cast<const unsigned char*>(p);
    return map_->data() && q >= map_->data() && q < map_->data() + map_->size();
  }

 private:
  std::shared_ptr<const detail::FileMap> map_;
  std::size_t data_offset_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
};

/// Writes `tensors` (name, float values) as a .safetensors file to `os`:
/// dtype F32, each tensor's shape as its dims' sizes in order, the data in
/// the given order, the header padded with spaces to a multiple of 8 bytes.
/// Throws value_error for an empty or repeated name or "__metadata__",
/// io_error if the stream fails.
///
/// Example:
///   Tensor<float> g(Shape{{"experts", 4}, {"model", 8}});
///   std::ostringstream os;
///   write_safetensors(os, {{"model.layers.1.mlp.gate.weight", g}});   // os.str(): the file's bytes
inline void write_safetensors(std::ostream& os,
                              const std::vector<std::pair<std::string, TensorView<const float>>>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::size_t at = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__" || header.contains(name))
      detail::raise<value_error>("write_safetensors: tensor name \"", name, "\" is empty, reserved or repeated");
    std::vector<index_t> shape;
    for (const auto& d : t.shape()) shape.push_back(d.size);
    const std::size_t bytes = detail::uz(detail::mul_size(t.size(), index_t{4}, "write_safetensors: ", name));
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {at, at + bytes}}};
    at += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<unsigned char>((static_cast<std::uint64_t>(h.size()) >> (8 * i)) & 0xffu);
  os.write(reinterpret_cast<const char*>(len), 8);
  os.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const auto& [name, t] : tensors) {
    for (index_t i = 0; i < t.size(); ++i) {  // (little-endian, whatever the host)
      std::uint32_t u;
      std::memcpy(&u, t.data() + i, 4);
      unsigned char b[4] = {static_cast<unsigned char>(u), static_cast<unsigned char>(u >> 8),
                            static_cast<unsigned char>(u >> 16), static_cast<unsigned char>(u >> 24)};
      os.write(reinterpret_cast<const char*>(b), 4);
    }
  }
  if (!os) detail::raise<io_error>("write_safetensors: the stream failed");
}

}  // namespace einmoe
