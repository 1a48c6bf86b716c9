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

#include <algorithm>
#include <array>
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
  friend std::ostream& operator<<(std::ostream& os, const Dim& d) { return os << d.name << ':' << d.size; }
};

/// An ordered list of Dims with unique names: [batch=8, length=512].
///
/// Shapes of up to 6 dims keep their dims inline, so copying or building one
/// allocates nothing (names of up to 15 characters live inside std::string);
/// a view's shape is copied with the view, so this keeps views O(1) and the
/// layers' steady-state forward passes free of allocations.
class Shape {
 public:
  /// Dims kept inline; larger ranks go to the heap.
  static constexpr index_t inline_rank = 6;

  Shape() = default;
  Shape(std::initializer_list<Dim> dims) {
    for (const auto& d : dims) push(d);
  }
  explicit Shape(const std::vector<Dim>& dims) {
    for (const auto& d : dims) push(d);
  }

  /// Parses "batch:8,length:512" (whitespace around tokens is ignored; "" is
  /// the rank-0 shape). Throws value_error for a token that is not name:size
  /// and shape_error for a repeated name.
  static Shape parse(const std::string& text) {
    Shape out;
    std::size_t pos = 0;
    auto trim = [](std::string s) {
      const auto b = s.find_first_not_of(" \t\n");
      if (b == std::string::npos) return std::string();
      const auto e = s.find_last_not_of(" \t\n");
      return s.substr(b, e - b + 1);
    };
    if (trim(text).empty()) return out;
    while (pos <= text.size()) {
      auto comma = text.find(',', pos);
      if (comma == std::string::npos) comma = text.size();
      const std::string tok = text.substr(pos, comma - pos);
      const auto colon = tok.find(':');
      if (colon == std::string::npos) detail::raise<value_error>("Shape::parse: \"", trim(tok), "\" is not name:size");
      const std::string name = trim(tok.substr(0, colon));
      const std::string num = trim(tok.substr(colon + 1));
      if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos || num.size() > 18)
        detail::raise<value_error>("Shape::parse: size \"", num, "\" of dim \"", name,
                                   "\" is not a non-negative integer");
      out.push(Dim(name, static_cast<index_t>(std::stoll(num))));
      pos = comma + 1;
    }
    return out;
  }

  index_t rank() const { return rank_; }
  /// Number of elements (1 for rank 0); never overflows (checked when the
  /// shape was made).
  /// Never throws.
  index_t num_elements() const { return count_; }
  /// The dims as a vector (a copy; iterate the shape itself to avoid one).
  /// Throws nothing but std::bad_alloc.
  std::vector<Dim> dims() const { return std::vector<Dim>(begin(), end()); }
  /// The i-th dim; shape_error when i is not in [0, rank).
  const Dim& operator[](index_t i) const {
    if (i < 0 || i >= rank_) detail::raise<shape_error>("Shape: index ", i, " is out of range for ", *this);
    return begin()[i];
  }
  const Dim* begin() const { return rank_ <= inline_rank ? small_.data() : big_.data(); }
  const Dim* end() const { return begin() + rank_; }

  /// Position of the named dim, or -1.
  /// Never throws.
  index_t index_of(const std::string& name) const {
    for (index_t i = 0; i < rank_; ++i)
      if (begin()[i].name == name) return i;
    return -1;
  }
  bool has(const std::string& name) const { return index_of(name) >= 0; }
  /// The named dim; throws shape_error naming `op` when absent.
  const Dim& get(const std::string& name, const char* op = "Shape::get") const {
    const index_t i = index_of(name);
    if (i < 0) detail::raise<shape_error>(op, ": no dim \"", name, "\" in ", *this);
    return begin()[i];
  }
  index_t size_of(const std::string& name, const char* op = "Shape::size_of") const { return get(name, op).size; }
  /// Position of the named dim; throws shape_error naming `op` when absent.
  index_t require(const std::string& name, const char* op) const {
    get(name, op);
    return index_of(name);
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(static_cast<std::size_t>(rank_));
    for (const auto& d : *this) out.push_back(d.name);
    return out;
  }

  /// Row-major strides in elements.
  /// Throws nothing but std::bad_alloc.
  std::vector<index_t> strides() const {
    std::vector<index_t> s(static_cast<std::size_t>(rank_), 1);
    for (std::size_t i = static_cast<std::size_t>(rank_); i-- > 1;) s[i - 1] = s[i] * begin()[i].size;
    return s;
  }

  /// True when every dim of *this is in `other` with the same size, in the
  /// same relative order (Mesh TF's "subsequence" broadcast test).
  /// Never throws.
  bool is_subsequence_of(const Shape& other) const {
    index_t j = 0;
    for (const auto& d : *this) {
      while (j < other.rank_ && other.begin()[j].name != d.name) ++j;
      if (j == other.rank_ || other.begin()[j].size != d.size) return false;
      ++j;
    }
    return true;
  }

  /// True when every dim of *this is in `other` (any order, same size).
  /// Never throws.
  bool is_subset_of(const Shape& other) const {
    for (const auto& d : *this) {
      const index_t i = other.index_of(d.name);
      if (i < 0 || other.begin()[i].size != d.size) return false;
    }
    return true;
  }

  /// This shape without the named dims (names not present are ignored).
  /// Throws nothing but std::bad_alloc.
  Shape without(const std::vector<std::string>& names) const {
    Shape out;
    for (const auto& d : *this)
      if (std::find(names.begin(), names.end(), d.name) == names.end()) out.push(d);
    return out;
  }
  /// This shape without one named dim (absent: unchanged); allocates nothing
  /// for inline shapes.
  /// Throws nothing but std::bad_alloc.
  Shape without_dim(const std::string& name) const {
    Shape out;
    for (const auto& d : *this)
      if (d.name != name) out.push(d);
    return out;
  }

  /// This shape with `d` appended; shape_error if its name is taken.
  Shape with(const Dim& d) const {
    Shape out = *this;
    out.push(d);
    return out;
  }

  std::string to_string() const {
    std::string s;
    for (index_t i = 0; i < rank_; ++i) {
      if (i) s += ',';
      s += begin()[i].name + ':' + std::to_string(begin()[i].size);
    }
    return s;
  }

  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (index_t i = 0; i < a.rank_; ++i)
      if (a.begin()[i] != b.begin()[i]) return false;
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << '[' << s.to_string() << ']'; }

 private:
  /// Appends d: its name must be new, and every stride and offset stays in
  /// 64 bits (with zero sizes counted as 1, the largest such product is
  /// span_, so checking it here makes every later size computation on the
  /// shape safe).
  /// Throws shape_error for a repeated name or an element count past 2^63 - 1,
  /// value_error for a negative size.
  void push(const Dim& d) {
    if (has(d.name)) detail::raise<shape_error>("Shape: dim \"", d.name, "\" appears twice");
    if (d.size < 0) detail::raise<value_error>("Shape: dim \"", d.name, "\" has negative size ", d.size);
    index_t span = span_;
    if (d.size > 0 && __builtin_mul_overflow(span, d.size, &span)) {
      Shape whole = *this;
      whole.append_unchecked(d);
      detail::raise<shape_error>("Shape: ", whole, " has more elements than fit in 64 bits");
    }
    span_ = span;
    count_ *= d.size;
    append_unchecked(d);
  }
  void append_unchecked(const Dim& d) {
    if (rank_ < inline_rank) {
      small_[static_cast<std::size_t>(rank_)] = d;
    } else {
      if (rank_ == inline_rank) big_.assign(small_.begin(), small_.end());
      big_.push_back(d);
    }
    ++rank_;
  }

  std::array<Dim, inline_rank> small_;
  std::vector<Dim> big_;  // all the dims, when more than inline_rank
  index_t rank_ = 0;
  index_t count_ = 1;
  index_t span_ = 1;
};

/// One or more dim names as an argument: "group", std::string, or {"a", "b"}.
/// (A braced list never binds to std::string's iterator-pair constructor.)
struct Names {
  std::vector<std::string> list;
  Names(const char* n) : list{n} {}                          // NOLINT: implicit by design
  Names(std::string n) : list{std::move(n)} {}               // NOLINT
  Names(std::initializer_list<std::string> l) : list(l) {}   // NOLINT
  Names(std::vector<std::string> l) : list(std::move(l)) {}  // NOLINT
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
          raise<shape_error>(op_, ": dim \"", d.name, "\" has size ", e.dim.size, " in ", e.where, " but ", d.size,
                             " in ", where);
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
