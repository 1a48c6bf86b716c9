// einmoe/core/tensor.hpp - Tensor<T>: a named Shape over contiguous row-major
// storage.
//
// Value semantics, like Eigen and xtensor containers: copying a Tensor copies
// its elements; moving is free. A tensor either owns its buffer (64-byte
// aligned) or *borrows* caller memory with Tensor::borrow (zero-copy, like an
// Eigen::Map; the caller keeps the memory alive). Copying a borrowed tensor
// gives an owning one.
//
// A tensor borrowed from const memory is a read-only view (like
// Eigen::Map<const M> or xt::adapt of const data): it reads like any tensor,
// and any write access (non-const data(), begin(), at(), [], fill) throws
// value_error, as numpy does for a non-writeable array. view() gives a
// read-only view of any tensor.
//
// Example:
//   Tensor<float> x(Shape{{"batch", 2}, {"model", 3}});       // zeros
//   x.at({1, 2}) = 5.f;
//   Tensor<float> y = Tensor<float>::borrow(ptr, x.shape());   // no copy, writable
//   Tensor<float> c = Tensor<float>::borrow(cptr, x.shape());  // const float*: read-only
//   Tensor<float> v = x.view();                                // read-only alias of x
//
// Element types: float, double, std::int32_t, std::int64_t, bool, other
// trivially copyable arithmetic types, and einmoe::bfloat16 (storage and
// conversion only).
//
// Sizes are checked: a shape whose element count overflows is a shape_error,
// and a tensor larger than the machine's memory is a resource_error raised
// before allocating.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "einmoe/core/dim.hpp"
#include "einmoe/core/error.hpp"
#include "einmoe/core/checked.hpp"

namespace einmoe {

namespace detail {
struct aligned_free {
  void operator()(void* p) const noexcept { ::operator delete(p, std::align_val_t{64}); }
};
struct uninitialized_t {};
}  // namespace detail

/// Tag for constructors that skip zero-filling (the caller writes every element).
inline constexpr detail::uninitialized_t uninitialized{};

/// Element types a Tensor may hold: arithmetic types, plus the storage types
/// that specialize this trait (einmoe::bfloat16).
template <class T>
struct is_tensor_element : std::is_arithmetic<T> {};

template <class T>
class Tensor {
  static_assert(is_tensor_element<T>::value && !std::is_const<T>::value,
                "einmoe::Tensor<T>: T must be an arithmetic type or einmoe::bfloat16");

 public:
  using value_type = T;

  /// A rank-0 tensor holding T{}.
  Tensor() : Tensor(Shape()) {}
  /// Zero-filled tensor of the given shape.
  explicit Tensor(Shape shape) : Tensor(std::move(shape), T{}) {}
  /// Tensor of the given shape filled with `value`.
  Tensor(Shape shape, T value) : Tensor(std::move(shape), uninitialized) { fill(value); }
  /// Tensor whose elements are left unset (for code that writes them all).
  Tensor(Shape shape, detail::uninitialized_t) : shape_(std::move(shape)) { allocate(); }
  /// Tensor with the given elements in row-major order.
  Tensor(Shape shape, const std::vector<T>& values) : Tensor(std::move(shape), uninitialized) {
    if (static_cast<index_t>(values.size()) != size())
      detail::raise<shape_error>("Tensor: ", values.size(), " values given for shape ", shape_,
                                 " of ", size(), " elements");
    std::copy(values.begin(), values.end(), data_);
  }
  Tensor(Shape shape, std::initializer_list<T> values)
      : Tensor(std::move(shape), std::vector<T>(values)) {}

  /// A rank-0 tensor: [].
  static Tensor scalar(T value) { return Tensor(Shape(), value); }

  /// Wraps caller memory without copying: a tensor [shape]. `data` must hold
  /// shape.num_elements() elements in row-major order and outlive the returned
  /// tensor (and its moves).
  static Tensor borrow(T* data, Shape shape) {
    if (data == nullptr && shape.num_elements() != 0)
      detail::raise<value_error>("Tensor::borrow: null data for shape ", shape);
    return Tensor(std::move(shape), data, borrow_tag{});
  }
  /// A read-only view [shape] of const caller memory (no copy); writes through it
  /// throw value_error.
  static Tensor borrow(const T* data, Shape shape) {
    Tensor t = borrow(const_cast<T*>(data), std::move(shape));
    t.readonly_ = true;
    return t;
  }
  /// A read-only view of memory that `owner` keeps alive (a memory-mapped
  /// file, say): the view, its moves and its view()s hold a reference to
  /// owner, so the memory lives as long as any of them.
  static Tensor borrow_shared(const T* data, Shape shape, std::shared_ptr<const void> owner) {
    Tensor t = borrow(data, std::move(shape));
    t.keep_ = std::move(owner);
    return t;
  }
  /// borrow(nullptr, shape): only for shapes without elements.
  static Tensor borrow(std::nullptr_t, Shape shape) { return borrow(static_cast<T*>(nullptr), std::move(shape)); }
  /// A read-only view of this tensor's elements (no copy). Valid while this
  /// tensor is alive and not moved from or reshaped into new memory.
  Tensor view() const {
    Tensor t = borrow(static_cast<const T*>(data_), shape_);
    t.keep_ = keep_;
    return t;
  }

  Tensor(const Tensor& other) : shape_(other.shape_) {
    allocate();
    copy_from(other.data_);
  }
  Tensor(Tensor&& other) noexcept
      : shape_(std::move(other.shape_)), owned_(std::move(other.owned_)), keep_(std::move(other.keep_)),
        data_(other.data_), readonly_(other.readonly_) {
    other.shape_ = Shape();
    other.data_ = nullptr;
    other.readonly_ = false;
  }
  Tensor& operator=(const Tensor& other) {
    if (this != &other) {
      Tensor tmp(other);
      *this = std::move(tmp);
    }
    return *this;
  }
  Tensor& operator=(Tensor&& other) noexcept {
    shape_ = std::move(other.shape_);
    owned_ = std::move(other.owned_);
    keep_ = std::move(other.keep_);
    data_ = other.data_;
    readonly_ = other.readonly_;
    other.shape_ = Shape();
    other.data_ = nullptr;
    other.readonly_ = false;
    return *this;
  }
  ~Tensor() = default;

  const Shape& shape() const { return shape_; }
  index_t rank() const { return shape_.rank(); }
  /// Number of elements.
  index_t size() const { return shape_.num_elements(); }
  /// Size of the named dim; shape_error if absent.
  index_t size_of(const std::string& name) const { return shape_.size_of(name, "Tensor::size_of"); }
  const Dim& dim(const std::string& name) const { return shape_.get(name, "Tensor::dim"); }
  bool borrowed() const { return !owned_ && data_ != nullptr; }
  /// False for a read-only view (borrowed from const memory, or view()).
  bool writable() const { return !readonly_; }

  /// Mutable access; value_error on a read-only view.
  T* data() { return writable_data(); }
  const T* data() const { return data_; }
  T* begin() { return writable_data(); }
  T* end() { return writable_data() + size(); }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size(); }

  /// Flat row-major element access, unchecked index.
  T& operator[](index_t i) { return writable_data()[i]; }
  const T& operator[](index_t i) const { return data_[i]; }

  /// Checked element access by position: one index per dim, in shape order.
  T& at(std::initializer_list<index_t> idx) { return writable_data()[offset(idx)]; }
  const T& at(std::initializer_list<index_t> idx) const { return data_[offset(idx)]; }
  T& at(const std::vector<index_t>& idx) { return writable_data()[offset(idx)]; }
  const T& at(const std::vector<index_t>& idx) const { return data_[offset(idx)]; }
  /// The single element of a rank-0 (or one-element) tensor.
  T item() const {
    if (size() != 1) detail::raise<shape_error>("Tensor::item: shape ", shape_, " has ", size(), " elements");
    return data_[0];
  }

  /// Gives the elements a new shape of the same total size (row-major
  /// relabel, no data movement).
  void set_shape(Shape shape) {
    if (shape.num_elements() != size())
      detail::raise<shape_error>("reshape: ", shape_, " has ", size(), " elements but ", shape, " has ",
                                 shape.num_elements());
    shape_ = std::move(shape);
  }

  void fill(T value) { std::fill(writable_data(), data_ + size(), value); }
  /// The elements in row-major order.
  std::vector<T> to_vector() const { return std::vector<T>(data_, data_ + size()); }

 private:
  struct borrow_tag {};
  Tensor(Shape shape, T* data, borrow_tag) : shape_(std::move(shape)), data_(data) {}

  template <class Idx>
  index_t offset(const Idx& idx) const {
    if (static_cast<index_t>(idx.size()) != rank())
      detail::raise<shape_error>("Tensor::at: ", idx.size(), " indices for shape ", shape_);
    index_t off = 0;
    index_t k = 0;
    for (index_t i : idx) {
      const Dim& d = shape_[k++];
      if (i < 0 || i >= d.size)
        detail::raise<shape_error>("Tensor::at: index ", i, " out of range for dim \"", d.name,
                                   "\" of size ", d.size);
      off = off * d.size + i;
    }
    return off;
  }
  T* writable_data() {
    if (readonly_)
      detail::raise<value_error>("Tensor: write access to a read-only view ", shape_,
                                 " (it borrows const memory; copy it to get a writable tensor)");
    return data_;
  }
  void allocate() {
    const index_t n = shape_.num_elements();
    if (n == 0) {
      owned_.reset();
      data_ = nullptr;
      return;
    }
    void* p = ::operator new(detail::bytes_for(n, sizeof(T), "Tensor ", shape_), std::align_val_t{64});
    owned_.reset(p);
    data_ = static_cast<T*>(p);
  }
  void copy_from(const T* src) {
    if (size() > 0) std::memcpy(static_cast<void*>(data_), src, static_cast<std::size_t>(size()) * sizeof(T));
  }

  Shape shape_;
  std::unique_ptr<void, detail::aligned_free> owned_;
  std::shared_ptr<const void> keep_;  // what a borrow_shared view keeps alive
  T* data_ = nullptr;
  bool readonly_ = false;
};

/// A tensor over a std::vector's elements (no copy); v.size() must equal
/// shape.num_elements(), and v must not be resized while the tensor lives.
template <class T>
Tensor<T> borrow(std::vector<T>& v, Shape shape) {
  if (static_cast<index_t>(v.size()) != shape.num_elements())
    detail::raise<shape_error>("borrow: a vector of ", v.size(), " elements for shape ", shape, " of ",
                               shape.num_elements());
  return Tensor<T>::borrow(v.data(), std::move(shape));
}
/// A read-only tensor [shape] over a const std::vector's elements (no copy).
template <class T>
Tensor<T> borrow(const std::vector<T>& v, Shape shape) {
  if (static_cast<index_t>(v.size()) != shape.num_elements())
    detail::raise<shape_error>("borrow: a vector of ", v.size(), " elements for shape ", shape, " of ",
                               shape.num_elements());
  return Tensor<T>::borrow(v.data(), std::move(shape));
}

}  // namespace einmoe
