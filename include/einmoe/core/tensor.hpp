// einmoe/core/tensor.hpp - Tensor<T> owns its elements; TensorView<T> and
// TensorView<const T> borrow them.
//
// Three types, as Eigen's Matrix, Map<M> and Map<const M>:
//
//   Tensor<T>             owns a 64-byte aligned buffer [shape]. Copying
//                         copies the elements; moving is free.
//   TensorView<T>         a mutable view: a shape and a pointer into memory
//                         someone else owns. Copying copies the shape and the
//                         pointer, never the elements.
//   TensorView<const T>   a read-only view. Writing through it does not
//                         compile.
//
// Conversions (all O(1), none copies elements):
//   const Tensor<T>&  -> TensorView<const T>   (implicit)
//   Tensor<T>&        -> TensorView<T>         (implicit)
//   TensorView<T>     -> TensorView<const T>   (implicit)
// and only explicitly the other way: Tensor<T>(view) or view.copy() copy the
// elements. A view of a temporary Tensor does not compile
// (`TensorView<const float> v = make_tensor();` would dangle), but a
// temporary binds to a `const TensorView<const T>&` parameter, as every op
// takes its inputs, for the length of the call.
//
// Every read-only op takes `const TensorView<const T>&`, so it accepts a
// Tensor, a mutable view or a read-only view alike, and T is deduced from
// any of them. Reading through a view never throws.
//
// Example:
//   Tensor<float> x(Shape{{"batch", 2}, {"model", 3}});        // zeros
//   x.at({1, 2}) = 5.f;
//   TensorView<const float> v = x;                             // no copy
//   TensorView<float> w = borrow(ptr, x.shape());              // float* ptr: a mutable view of caller memory
//   TensorView<const float> c = borrow(cptr, x.shape());       // const float* cptr: read-only
//   Tensor<float> y = v.copy();                                // an owning copy
//
// Element types: float, double, std::int32_t, std::int64_t, bool, other
// trivially copyable arithmetic types, and einmoe::bfloat16 (storage and
// conversion only).
//
// Sizes are checked: a shape whose element count overflows is a shape_error,
// and a tensor larger than the machine's memory is a resource_error raised
// before allocating.
//
// A view's memory must outlive it (as with std::span). Views that must keep
// their memory alive themselves (memory-mapped checkpoints) hold a shared
// owner: borrow(data, shape, owner).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "einmoe/core/checked.hpp"
#include "einmoe/core/dim.hpp"
#include "einmoe/core/error.hpp"

namespace einmoe {

/// Tag type of `uninitialized`.
struct uninitialized_t {
  explicit constexpr uninitialized_t() = default;
};
/// Tag for constructors that skip zero-filling (the caller writes every element).
inline constexpr uninitialized_t uninitialized{};

/// `T` in a context that does not deduce it (std::type_identity of C++20):
/// `x * 2` converts 2 to x's element type instead of failing to deduce.
template <class T>
struct type_identity {
  using type = T;
};
template <class T>
using type_identity_t = typename type_identity<T>::type;

/// Element types a Tensor may hold: arithmetic types, plus the storage types
/// that specialize this trait (einmoe::bfloat16).
template <class T>
struct is_tensor_element : std::is_arithmetic<T> {};

template <class T>
class Tensor;
template <class T>
class TensorView;

namespace detail {
struct aligned_free {
  void operator()(void* p) const noexcept { ::operator delete (p, std::align_val_t{64}); }
};
/// Element offset of a full index in `shape` (row-major); shape_error for a
/// wrong count or an index out of range.
template <class Idx>
index_t offset_of(const Shape& shape, const Idx& idx, const char* op) {
  if (static_cast<index_t>(idx.size()) != shape.rank())
    raise<shape_error>(op, ": ", idx.size(), " indices for shape ", shape);
  index_t off = 0;
  index_t k = 0;
  for (index_t i : idx) {
    const Dim& d = shape.begin()[k++];
    if (i < 0 || i >= d.size)
      raise<shape_error>(op, ": index ", i, " out of range for dim \"", d.name, "\" of size ", d.size);
    off = off * d.size + i;
  }
  return off;
}
template <class T>
const T* default_view_data() {
  static const T zero{};
  return &zero;
}
}  // namespace detail

/// A read-only view [shape] of elements someone else owns. Copying copies the
/// shape and the pointer. Default-constructed: the rank-0 tensor T{}.
template <class T>
class TensorView<const T> {
  static_assert(is_tensor_element<T>::value && !std::is_const<T>::value,
                "einmoe::TensorView<const T>: T must be an arithmetic type or einmoe::bfloat16");

 public:
  using element_type = const T;
  using value_type = T;

  TensorView() : data_(detail::default_view_data<T>()) {}
  /// A view [shape] of `data`, which must hold shape.num_elements() elements
  /// in row-major order and outlive the view; `owner` (optional) is kept
  /// alive by the view and its copies. Throws value_error for null data of a
  /// non-empty shape.
  TensorView(const T* data, Shape shape, std::shared_ptr<const void> owner = {})
      : shape_(std::move(shape)), data_(data), keep_(std::move(owner)) {
    if (data_ == nullptr && shape_.num_elements() != 0)
      detail::raise<value_error>("TensorView: null data for shape ", shape_);
  }
  /// A view of a temporary would dangle: keep the tensor in a variable (or
  /// give it to shared_view).
  TensorView(Tensor<T>&&) = delete;
  TensorView(const Tensor<T>&&) = delete;
  TensorView(const TensorView&) = default;
  TensorView(TensorView&&) = default;
  TensorView& operator=(const TensorView&) = default;
  TensorView& operator=(TensorView&&) = default;
  TensorView& operator=(Tensor<T>&&) = delete;
  TensorView& operator=(const Tensor<T>&&) = delete;

  const Shape& shape() const { return shape_; }
  index_t rank() const { return shape_.rank(); }
  /// Number of elements.
  /// Never throws.
  index_t size() const { return shape_.num_elements(); }
  /// Size of the named dim; shape_error if absent.
  index_t size_of(const std::string& name) const { return shape_.size_of(name, "Tensor::size_of"); }
  /// The named dim; shape_error if absent.
  const Dim& dim(const std::string& name) const { return shape_.get(name, "Tensor::dim"); }
  /// Whether elements can be written through this type (a compile-time fact).
  /// Never throws.
  static constexpr bool writable() { return false; }

  const T* data() const { return data_; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size(); }
  /// Flat row-major element access, unchecked index.
  /// Never throws.
  const T& operator[](index_t i) const { return data_[i]; }
  /// Checked element access: one index per dim, in shape order; shape_error
  /// for a wrong count or an index out of range.
  const T& at(std::initializer_list<index_t> idx) const { return data_[detail::offset_of(shape_, idx, "Tensor::at")]; }
  const T& at(const std::vector<index_t>& idx) const { return data_[detail::offset_of(shape_, idx, "Tensor::at")]; }
  /// The single element of a one-element tensor; shape_error otherwise.
  T item() const {
    if (size() != 1) detail::raise<shape_error>("Tensor::item: shape ", shape_, " has ", size(), " elements");
    return data_[0];
  }
  /// The elements in row-major order (a copy).
  /// Throws nothing but std::bad_alloc.
  std::vector<T> to_vector() const { return std::vector<T>(data_, data_ + size()); }
  /// An owning copy of the elements.
  /// Throws resource_error if the tensor would not fit in memory.
  Tensor<T> copy() const { return Tensor<T>(*this); }

  /// Gives the elements a new shape of the same total size (a row-major
  /// relabel: no data moves). shape_error if the sizes differ.
  void set_shape(Shape shape) {
    if (shape.num_elements() != size())
      detail::raise<shape_error>("reshape: ", shape_, " has ", size(), " elements but ", shape, " has ",
                                 shape.num_elements());
    shape_ = std::move(shape);
  }
  /// What the view keeps alive (null unless made with an owner).
  /// Never throws.
  const std::shared_ptr<const void>& owner() const { return keep_; }

 protected:
  struct internal_tag {};
  TensorView(internal_tag, Shape shape, const T* data) : shape_(std::move(shape)), data_(data) {}

  Shape shape_;
  const T* data_ = nullptr;
  std::shared_ptr<const void> keep_;
};

/// A mutable view [shape] of elements someone else owns: reads as
/// TensorView<const T>, and writes through. Like std::span<T>, a const view
/// still writes: const-ness of the elements is the element type's. (Not
/// default-constructible: a mutable view always has memory to write to.)
template <class T>
class TensorView : public TensorView<const T> {
  using Base = TensorView<const T>;

 public:
  /// A view [shape] of `data` (see TensorView<const T>).
  /// Never throws.
  TensorView(T* data, Shape shape, std::shared_ptr<const void> owner = {})
      : Base(data, std::move(shape), std::move(owner)) {}
  /// A mutable view of `t`'s elements.
  /// Never throws.
  TensorView(Tensor<T>& t) : Base(typename Base::internal_tag{}, t.shape(), t.data()) {}  // NOLINT: implicit by design
  TensorView(Tensor<T>&&) = delete;

  static constexpr bool writable() { return true; }
  T* data() const { return const_cast<T*>(this->data_); }
  T* begin() const { return data(); }
  T* end() const { return data() + this->size(); }
  T& operator[](index_t i) const { return data()[i]; }
  T& at(std::initializer_list<index_t> idx) const { return data()[detail::offset_of(this->shape_, idx, "Tensor::at")]; }
  T& at(const std::vector<index_t>& idx) const { return data()[detail::offset_of(this->shape_, idx, "Tensor::at")]; }
  /// Sets every element to `value`.
  /// Never throws.
  void fill(T value) const { std::fill(begin(), end(), value); }
};

/// A tensor that owns its elements: a Shape over a 64-byte aligned,
/// row-major buffer (a one-element tensor keeps its element inline and
/// allocates nothing). Value semantics (copying copies the elements; moving
/// is free). Reads like a TensorView<const T> wherever one is expected.
template <class T>
class Tensor : public TensorView<const T> {
  using Base = TensorView<const T>;
  using Base::data_;
  using Base::shape_;

 public:
  using value_type = T;

  /// A rank-0 tensor holding T{}.
  /// Throws nothing but std::bad_alloc.
  Tensor() : Tensor(Shape()) {}
  /// Zero-filled tensor [shape].
  /// Throws resource_error if the tensor would not fit in memory.
  explicit Tensor(Shape shape) : Tensor(std::move(shape), T{}) {}
  /// Tensor [shape] filled with `value`.
  /// Throws resource_error if the tensor would not fit in memory.
  Tensor(Shape shape, T value) : Tensor(std::move(shape), uninitialized) { fill(value); }
  /// Tensor [shape] whose elements are left unset (for code that writes them all).
  /// Throws resource_error if the tensor would not fit in memory.
  Tensor(Shape shape, uninitialized_t) : Base(typename Base::internal_tag{}, std::move(shape), nullptr) { allocate(); }
  /// Tensor [shape] with the given elements in row-major order; shape_error
  /// when their count differs from the shape's.
  Tensor(Shape shape, const std::vector<T>& values) : Tensor(std::move(shape), uninitialized) {
    if (static_cast<index_t>(values.size()) != this->size())
      detail::raise<shape_error>("Tensor: ", values.size(), " values given for shape ", shape_, " of ", this->size(),
                                 " elements");
    std::copy(values.begin(), values.end(), data());
  }
  Tensor(Shape shape, std::initializer_list<T> values) : Tensor(std::move(shape), std::vector<T>(values)) {}
  /// An owning copy of a view's elements (explicit: copies are never made by
  /// accident).
  /// Throws resource_error if the tensor would not fit in memory.
  explicit Tensor(const TensorView<const T>& v) : Tensor(v.shape(), uninitialized) { copy_from(v.data()); }

  /// A rank-0 tensor [] holding `value`.
  /// Throws nothing but std::bad_alloc.
  static Tensor scalar(T value) { return Tensor(Shape(), value); }

  Tensor(const Tensor& other) : Tensor(other.shape(), uninitialized) { copy_from(other.data()); }
  Tensor(Tensor&& other) noexcept
      : Base(typename Base::internal_tag{}, std::move(other.shape_), other.data_), owned_(std::move(other.owned_)) {
    take_inline(other);
    other.reset_empty();
  }
  Tensor& operator=(const Tensor& other) {
    if (this != &other) {
      Tensor tmp(other);
      *this = std::move(tmp);
    }
    return *this;
  }
  Tensor& operator=(Tensor&& other) noexcept {
    if (this == &other) return *this;
    shape_ = std::move(other.shape_);
    owned_ = std::move(other.owned_);
    data_ = other.data_;
    take_inline(other);
    other.reset_empty();
    return *this;
  }
  ~Tensor() = default;

  static constexpr bool writable() { return true; }

  T* data() { return const_cast<T*>(data_); }
  const T* data() const { return data_; }
  T* begin() { return data(); }
  T* end() { return data() + this->size(); }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + this->size(); }
  /// Flat row-major element access, unchecked index.
  /// Never throws.
  T& operator[](index_t i) { return data()[i]; }
  const T& operator[](index_t i) const { return data_[i]; }
  /// Checked element access: one index per dim, in shape order; shape_error
  /// for a wrong count or an index out of range.
  T& at(std::initializer_list<index_t> idx) { return data()[detail::offset_of(shape_, idx, "Tensor::at")]; }
  const T& at(std::initializer_list<index_t> idx) const { return Base::at(idx); }
  T& at(const std::vector<index_t>& idx) { return data()[detail::offset_of(shape_, idx, "Tensor::at")]; }
  const T& at(const std::vector<index_t>& idx) const { return Base::at(idx); }

  /// A mutable view of the elements (valid while this tensor lives and is
  /// not moved from or assigned to).
  /// Never throws.
  TensorView<T> view() { return TensorView<T>(*this); }
  /// A read-only view of the elements.
  /// Never throws.
  TensorView<const T> view() const { return TensorView<const T>(*this); }

  /// Sets every element to `value`.
  /// Never throws.
  void fill(T value) { std::fill(begin(), end(), value); }

  /// Makes this tensor [shape], reusing the buffer when it holds exactly
  /// that many elements (a relabel) and allocating otherwise; the elements
  /// are unset after a reallocation.
  /// Throws resource_error if the tensor would not fit in memory.
  void resize(const Shape& shape) {
    if (shape.num_elements() == this->size()) {
      shape_ = shape;
      return;
    }
    *this = Tensor(shape, uninitialized);
  }

 private:
  void reset_empty() {  // a moved-from tensor: [] without storage; assign to it before use
    shape_ = Shape();
    data_ = nullptr;
    owned_.reset();
  }
  void allocate() {
    const index_t n = shape_.num_elements();
    if (n <= 1) {  // no elements, or one kept inline (scalars allocate nothing)
      owned_.reset();
      data_ = n == 0 ? nullptr : &one_;
      return;
    }
    void* p = ::operator new (detail::bytes_for(n, sizeof(T), "Tensor ", shape_), std::align_val_t{64});
    owned_.reset(p);
    data_ = static_cast<T*>(p);
  }
  /// After taking other's buffer: its inline element, when that is where its data was.
  void take_inline(const Tensor& other) {
    if (other.data_ == &other.one_) one_ = other.one_, data_ = &one_;
  }
  void copy_from(const T* src) {
    if (this->size() > 0)
      std::memcpy(static_cast<void*>(data()), src, static_cast<std::size_t>(this->size()) * sizeof(T));
  }

  std::unique_ptr<void, detail::aligned_free> owned_;
  T one_{};  // the element of a one-element tensor
};

/// An optional read-only tensor argument: std::nullopt, a Tensor or a view
/// (T is deduced from the other arguments, never from this one).
template <class T>
using OptionalView = std::optional<TensorView<const type_identity_t<T>>>;

/// An element of an argument list of tensors, `einsum({x, w}, ...)` or
/// `concat<float>({a, b}, "length")`: a read-only view that binds to a
/// Tensor, a view, or a temporary (which lives until the end of the full
/// expression, as the list does).
template <class T>
class TensorRef {
 public:
  TensorRef(const TensorView<const T>& t) : v_(t) {}  // NOLINT: implicit by design
  const TensorView<const T>& get() const { return v_; }

 private:
  TensorView<const T> v_;
};

/// A mutable view [shape] of caller memory (no copy): `data` holds
/// shape.num_elements() elements in row-major order and outlives the view.
/// value_error for null data of a non-empty shape.
template <class T>
TensorView<T> borrow(T* data, Shape shape) {
  return TensorView<T>(data, std::move(shape));
}
/// A read-only view [shape] of const caller memory (no copy).
/// Never throws.
template <class T>
TensorView<const T> borrow(const T* data, Shape shape) {
  return TensorView<const T>(data, std::move(shape));
}
/// A read-only view [shape] of memory that `owner` keeps alive (a
/// memory-mapped file, say): the view and its copies hold a reference to
/// owner, so the memory lives as long as any of them.
/// Never throws.
template <class T>
TensorView<const T> borrow(const T* data, Shape shape, std::shared_ptr<const void> owner) {
  return TensorView<const T>(data, std::move(shape), std::move(owner));
}

/// A read-only view of `t`, which it takes over: the view and its copies
/// share the ownership of the elements (for weights built in a function and
/// handed out as views, e.g. a checkpoint's stacked experts).
/// Throws nothing but std::bad_alloc.
template <class T>
TensorView<const T> shared_view(Tensor<T>&& t) {
  auto held = std::make_shared<Tensor<T>>(std::move(t));
  return TensorView<const T>(held->data(), held->shape(), held);
}

namespace detail {
template <class V>
void check_vector_size(const V& v, const Shape& shape) {
  if (static_cast<index_t>(v.size()) != shape.num_elements())
    raise<shape_error>("borrow: a vector of ", v.size(), " elements for shape ", shape, " of ", shape.num_elements());
}
}  // namespace detail

/// A mutable view [shape] of a std::vector's elements (no copy); v.size()
/// must equal shape.num_elements() (else shape_error), and v must not be
/// resized while the view lives.
template <class T>
TensorView<T> borrow(std::vector<T>& v, Shape shape) {
  detail::check_vector_size(v, shape);
  return TensorView<T>(v.data(), std::move(shape));
}
/// A read-only view [shape] of a const std::vector's elements (no copy).
/// Throws shape_error unless v holds exactly [shape]'s element count.
template <class T>
TensorView<const T> borrow(const std::vector<T>& v, Shape shape) {
  detail::check_vector_size(v, shape);
  return TensorView<const T>(v.data(), std::move(shape));
}
template <class T>
void borrow(std::vector<T>&&, Shape) = delete;  // a view of a temporary would dangle

}  // namespace einmoe
