// einmoe/core/xtensor_interop.hpp - zero-copy both ways between einmoe
// tensors and xtensor containers.
//
// Example:
//   xt::xarray<float> a = xt::zeros<float>({2, 3});
//   auto t = einmoe::borrow(a, {"batch", "model"});   // Tensor over a's memory
//   auto v = einmoe::as_xtensor(t);                   // xtensor adaptor over t's memory
//   const auto& ca = a;
//   auto r = einmoe::borrow(ca, {"batch", "model"});  // read-only view
//
// This header is the only one of einmoe that includes xtensor; the rest of the
// library never needs it.
#pragma once

#include <string>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>

#include "einmoe/core/tensor.hpp"

namespace einmoe {
namespace detail {
template <class C>
Shape named_shape_of(const C& c, const std::vector<std::string>& names, const char* op) {
  if (names.size() != c.dimension())
    raise<shape_error>(op, ": ", names.size(), " names given for an array of rank ", c.dimension());
  std::vector<Dim> dims;
  for (std::size_t i = 0; i < names.size(); ++i) dims.emplace_back(names[i], static_cast<index_t>(c.shape()[i]));
  return Shape(std::move(dims));
}
}  // namespace detail

/// A mutable view over the memory of a row-major xarray (no copy); `a` must outlive it.
/// Axis i gets names[i]: [names[0]=a.shape(0), ...].
/// Throws shape_error unless names has one distinct name per axis and a is row-major.
template <class T>
TensorView<T> borrow(xt::xarray<T>& a, const std::vector<std::string>& names) {
  if (a.layout() != xt::layout_type::row_major)
    detail::raise<shape_error>("borrow: the xarray is not row-major; einmoe tensors are row-major");
  return borrow(a.data(), detail::named_shape_of(a, names, "borrow"));
}

/// A mutable view over the memory of a row-major xtensor (no copy): [names...].
/// Throws shape_error unless names has one distinct name per axis and a is row-major.
template <class T, std::size_t N>
TensorView<T> borrow(xt::xtensor<T, N>& a, const std::vector<std::string>& names) {
  if (a.layout() != xt::layout_type::row_major)
    detail::raise<shape_error>("borrow: the xtensor is not row-major; einmoe tensors are row-major");
  return borrow(a.data(), detail::named_shape_of(a, names, "borrow"));
}

/// A read-only view over a const row-major xarray (no copy): [names...].
/// Throws shape_error unless names has one distinct name per axis and a is row-major.
template <class T>
TensorView<const T> borrow(const xt::xarray<T>& a, const std::vector<std::string>& names) {
  if (a.layout() != xt::layout_type::row_major)
    detail::raise<shape_error>("borrow: the xarray is not row-major; einmoe tensors are row-major");
  const T* p = a.data();
  return borrow(p, detail::named_shape_of(a, names, "borrow"));
}

/// A read-only view over a const row-major xtensor (no copy): [names...].
/// Throws shape_error unless names has one distinct name per axis and a is row-major.
template <class T, std::size_t N>
TensorView<const T> borrow(const xt::xtensor<T, N>& a, const std::vector<std::string>& names) {
  if (a.layout() != xt::layout_type::row_major)
    detail::raise<shape_error>("borrow: the xtensor is not row-major; einmoe tensors are row-major");
  const T* p = a.data();
  return borrow(p, detail::named_shape_of(a, names, "borrow"));
}

/// An xtensor adaptor over t's memory (no copy; positional axes in t's dim
/// order). Valid while t is alive and not moved from.
/// Throws nothing but std::bad_alloc.
template <class T>
auto as_xtensor(const TensorView<const T>& t) {
  std::vector<std::size_t> shape;
  for (const auto& d : t.shape()) shape.push_back(static_cast<std::size_t>(d.size));
  return xt::adapt(t.data(), static_cast<std::size_t>(t.size()), xt::no_ownership(), shape);
}
template <class T>
auto as_xtensor(Tensor<T>& t) {
  std::vector<std::size_t> shape;
  for (const auto& d : t.shape()) shape.push_back(static_cast<std::size_t>(d.size));
  return xt::adapt(t.data(), static_cast<std::size_t>(t.size()), xt::no_ownership(), shape);
}

/// A copy of t as an xarray (positional axes in t's dim order).
/// Throws nothing but std::bad_alloc.
template <class T>
xt::xarray<T> to_xarray(const TensorView<const T>& t) {
  std::vector<std::size_t> shape;
  for (const auto& d : t.shape()) shape.push_back(static_cast<std::size_t>(d.size));
  xt::xarray<T> out(shape);
  std::copy(t.begin(), t.end(), out.begin());
  return out;
}

}  // namespace einmoe
