// einmoe/core/dim.hpp - named dimensions and shapes.
//
// A Dim is a value: a name and a size, like Haliax's Axis("position", 1024) or
// Mesh TF's mtf.Dimension. A Shape is an ordered list of Dims with unique
// names; the order is the row-major memory order of a Tensor.
//
// Example:
//   Dim batch{"batch", 8};
//   Shape s = Shape::parse("batch:8,length:512");   // [batch=8, length=512]
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "einmoe/core/error.hpp"

namespace einmoe {

/// Sizes, strides and offsets; signed so that differences are safe.
using index_t = std::int64_t;

/// A named dimension. The name says what the axis means ("experts"); the size
/// how long it is. Names are non-empty and contain none of ",: \t\n".
struct Dim {
  std::string name;
  index_t size = 0;

  Dim() = default;
  Dim(std::string n, index_t s) : name(std::move(n)), size(s) {
    if (name.empty()) detail::raise<value_error>("Dim: empty name");
    if (name.find_first_of(",: \t\n") != std::string::npos)
      detail::raise<value_error>("Dim: name \"", name, "\" contains one of \",: \" or whitespace");
    if (size < 0) detail::raise<value_error>("Dim: \"", name, "\" has negative size ", size);
  }

  friend bool operator==(const Dim& a, const Dim& b) { return a.size == b.size && a.name == b.name; }
  friend bool operator!=(const Dim& a, const Dim& b) { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& os, const Dim& d) {
    return os << d.name << ':' << d.size;
  }
};

/// An ordered list of Dims with unique names: [batch=8, length=512].
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<Dim> dims) : Shape(std::vector<Dim>(dims)) {}
  explicit Shape(std::vector<Dim> dims) : dims_(std::move(dims)) {
    for (std::size_t i = 0; i < dims_.size(); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (dims_[i].name == dims_[j].name)
          detail::raise<shape_error>("Shape: dim \"", dims_[i].name, "\" appears twice");
    // Every stride and offset is a product of sizes; with zero sizes counted
    // as 1, the largest such product is this one, so checking it once here
    // makes every later size computation on the shape safe.
    index_t span = 1;
    count_ = 1;
    for (const auto& d : dims_) {
      if (d.size < 0) detail::raise<value_error>("Shape: dim \"", d.name, "\" has negative size ", d.size);
      if (d.size > 0 && __builtin_mul_overflow(span, d.size, &span))
        detail::raise<shape_error>("Shape: ", *this, " has more elements than fit in 64 bits");
      count_ *= d.size;
    }
  }

  /// Parses "batch:8,length:512" (whitespace around tokens is ignored; "" is
  /// the rank-0 shape).
  static Shape parse(const std::string& text) {
    std::vector<Dim> dims;
    std::size_t pos = 0;
    auto trim = [](std::string s) {
      const auto b = s.find_first_not_of(" \t\n");
      if (b == std::string::npos) return std::string();
      const auto e = s.find_last_not_of(" \t\n");
      return s.substr(b, e - b + 1);
    };
    if (trim(text).empty()) return Shape();
    while (pos <= text.size()) {
      auto comma = text.find(',', pos);
      if (comma == std::string::npos) comma = text.size();
      const std::string tok = text.substr(pos, comma - pos);
      const auto colon = tok.find(':');
      if (colon == std::string::npos)
        detail::raise<value_error>("Shape::parse: \"", trim(tok), "\" is not name:size");
      const std::string name = trim(tok.substr(0, colon));
      const std::string num = trim(tok.substr(colon + 1));
      if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos || num.size() > 18)
        detail::raise<value_error>("Shape::parse: size \"", num, "\" of dim \"", name,
                                   "\" is not a non-negative integer");
      dims.emplace_back(name, static_cast<index_t>(std::stoll(num)));
      pos = comma + 1;
    }
    return Shape(std::move(dims));
  }

  index_t rank() const { return static_cast<index_t>(dims_.size()); }
  /// Number of elements (1 for rank 0); never overflows (checked when the
  /// shape was made).
  index_t num_elements() const { return count_; }
  const std::vector<Dim>& dims() const { return dims_; }
  const Dim& operator[](index_t i) const { return dims_.at(static_cast<std::size_t>(i)); }
  auto begin() const { return dims_.begin(); }
  auto end() const { return dims_.end(); }

  /// Position of the named dim, or -1.
  index_t index_of(const std::string& name) const {
    for (std::size_t i = 0; i < dims_.size(); ++i)
      if (dims_[i].name == name) return static_cast<index_t>(i);
    return -1;
  }
  bool has(const std::string& name) const { return index_of(name) >= 0; }
  /// The named dim; throws shape_error naming `op` when absent.
  const Dim& get(const std::string& name, const char* op = "Shape::get") const {
    const index_t i = index_of(name);
    if (i < 0) detail::raise<shape_error>(op, ": no dim \"", name, "\" in ", *this);
    return dims_[static_cast<std::size_t>(i)];
  }
  index_t size_of(const std::string& name, const char* op = "Shape::size_of") const {
    return get(name, op).size;
  }
  /// Position of the named dim; throws shape_error naming `op` when absent.
  index_t require(const std::string& name, const char* op) const {
    get(name, op);
    return index_of(name);
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(dims_.size());
    for (const auto& d : dims_) out.push_back(d.name);
    return out;
  }

  /// Row-major strides in elements.
  std::vector<index_t> strides() const {
    std::vector<index_t> s(dims_.size(), 1);
    for (std::size_t i = dims_.size(); i-- > 1;) s[i - 1] = s[i] * dims_[i].size;
    return s;
  }

  /// True when every dim of *this is in `other` with the same size, in the
  /// same relative order (Mesh TF's "subsequence" broadcast test).
  bool is_subsequence_of(const Shape& other) const {
    std::size_t j = 0;
    for (const auto& d : dims_) {
      while (j < other.dims_.size() && other.dims_[j].name != d.name) ++j;
      if (j == other.dims_.size() || other.dims_[j].size != d.size) return false;
      ++j;
    }
    return true;
  }

  /// True when every dim of *this is in `other` (any order, same size).
  bool is_subset_of(const Shape& other) const {
    for (const auto& d : dims_) {
      const index_t i = other.index_of(d.name);
      if (i < 0 || other[i].size != d.size) return false;
    }
    return true;
  }

  /// This shape without the named dims (names not present are ignored).
  Shape without(const std::vector<std::string>& names) const {
    std::vector<Dim> out;
    for (const auto& d : dims_) {
      bool drop = false;
      for (const auto& n : names) drop = drop || (n == d.name);
      if (!drop) out.push_back(d);
    }
    return Shape(std::move(out));
  }

  /// This shape with `d` appended.
  Shape with(const Dim& d) const {
    auto v = dims_;
    v.push_back(d);
    return Shape(std::move(v));
  }

  std::string to_string() const {
    std::string s;
    for (std::size_t i = 0; i < dims_.size(); ++i) {
      if (i) s += ',';
      s += dims_[i].name + ':' + std::to_string(dims_[i].size);
    }
    return s;
  }

  friend bool operator==(const Shape& a, const Shape& b) { return a.dims_ == b.dims_; }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
    return os << '[' << s.to_string() << ']';
  }

 private:
  std::vector<Dim> dims_;
  index_t count_ = 1;
};

/// One or more dim names as an argument: "group", std::string, or {"a", "b"}.
/// (A braced list never binds to std::string's iterator-pair constructor.)
struct Names {
  std::vector<std::string> list;
  Names(const char* n) : list{n} {}                                  // NOLINT: implicit by design
  Names(std::string n) : list{std::move(n)} {}                       // NOLINT
  Names(std::initializer_list<std::string> l) : list(l) {}           // NOLINT
  Names(std::vector<std::string> l) : list(std::move(l)) {}          // NOLINT
};

namespace detail {

/// Records name→size over all the shapes of one operation and throws the
/// canonical message on the first disagreement:
///   einsum: dim "experts" has size 16 in input 0 but 8 in input 1
class DimRegistry {
 public:
  explicit DimRegistry(const char* op) : op_(op) {}
  void add(const Shape& s, const std::string& where) {
    for (const auto& d : s) add(d, where);
  }
  void add(const Dim& d, const std::string& where) {
    for (const auto& e : entries_) {
      if (e.dim.name == d.name) {
        if (e.dim.size != d.size)
          raise<shape_error>(op_, ": dim \"", d.name, "\" has size ", e.dim.size, " in ", e.where,
                             " but ", d.size, " in ", where);
        return;
      }
    }
    entries_.push_back({d, where});
  }
  bool has(const std::string& name) const {
    for (const auto& e : entries_)
      if (e.dim.name == name) return true;
    return false;
  }
  /// Dims in order of first appearance.
  std::vector<Dim> dims() const {
    std::vector<Dim> out;
    for (const auto& e : entries_) out.push_back(e.dim);
    return out;
  }

 private:
  struct Entry {
    Dim dim;
    std::string where;
  };
  const char* op_;
  std::vector<Entry> entries_;
};

inline std::size_t uz(index_t i) { return static_cast<std::size_t>(i); }

}  // namespace detail
}  // namespace einmoe
