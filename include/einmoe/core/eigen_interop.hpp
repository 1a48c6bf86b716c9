// einmoe/core/eigen_interop.hpp - zero-copy both ways between einmoe tensors
// and Eigen matrices.
//
// Example:
//   // a tensor as a matrix: x [batch=4, length=8, model=16]
//   auto m = einmoe::as_matrix(x, {"batch", "length"}, {"model"});  // 32 x 16 Map
//   // a matrix as a tensor, dims named in the matrix's storage order:
//   Eigen::MatrixXf w(512, 16);                       // column-major
//   auto t = einmoe::borrow(w, "model", "experts");   // [experts=16, model=512]
//   const Eigen::VectorXf& b = bias;                  // 16 values
//   auto v = einmoe::borrow(b, "experts");            // [experts=16], read-only
//
// as_matrix: the row dims must be x's leading dims and the column dims the
// rest, both in x's order (transpose first otherwise): a Map cannot reorder
// memory.
//
// borrow: a column-major m x n matrix *is* a row-major [n, m] tensor, so it
// is borrowed as [cols, rows]; a row-major one as [rows, cols]. Nothing is
// transposed or copied, and the names say which axis is which whatever the
// storage order. A const matrix (or one without write access) gives a
// read-only view. The matrix must be contiguous (inner stride 1, no padding
// between columns or rows) and outlive the tensor.
#pragma once

#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "einmoe/core/tensor.hpp"

namespace einmoe {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>>;

namespace detail {
inline std::pair<index_t, index_t> matrix_dims(const Shape& s, const Names& rows, const Names& cols) {
  const auto& r = rows.list;
  const auto& c = cols.list;
  bool ok = static_cast<index_t>(r.size() + c.size()) == s.rank();
  index_t nr = 1, nc = 1;
  for (std::size_t i = 0; ok && i < r.size(); ++i) {
    ok = s[static_cast<index_t>(i)].name == r[i];
    if (ok) nr *= s[static_cast<index_t>(i)].size;
  }
  for (std::size_t i = 0; ok && i < c.size(); ++i) {
    ok = s[static_cast<index_t>(r.size() + i)].name == c[i];
    if (ok) nc *= s[static_cast<index_t>(r.size() + i)].size;
  }
  if (!ok) {
    std::string want;
    for (const auto& n : r) want += (want.empty() ? "" : ",") + n;
    want += " | ";
    for (const auto& n : c) want += n + ",";
    raise<shape_error>("as_matrix: rows | cols (", want, ") are not the dims of ", s,
                       " in order; transpose the tensor first");
  }
  return {nr, nc};
}

/// The shape of a contiguous Eigen matrix in its storage order.
template <class Derived>
Shape eigen_shape(const Eigen::DenseBase<Derived>& m, const std::string& rows, const std::string& cols) {
  const auto& d = m.derived();
  const index_t r = static_cast<index_t>(d.rows()), c = static_cast<index_t>(d.cols());
  const bool row_major = Derived::IsRowMajor;
  const index_t inner = row_major ? c : r, outer = row_major ? r : c;
  if (r * c > 0 && (d.innerStride() != 1 || (outer > 1 && d.outerStride() != inner)))
    raise<shape_error>("borrow: the Eigen matrix (", r, " x ", c, ") is not contiguous (inner stride ", d.innerStride(),
                       ", outer stride ", d.outerStride(), "); copy it into a plain matrix first");
  return row_major ? Shape{Dim(rows, r), Dim(cols, c)} : Shape{Dim(cols, c), Dim(rows, r)};
}

template <class Derived>
Shape eigen_vector_shape(const Eigen::DenseBase<Derived>& v, const std::string& name) {
  const auto& d = v.derived();
  if (d.rows() != 1 && d.cols() != 1)
    raise<shape_error>("borrow: an Eigen matrix of ", d.rows(), " x ", d.cols(),
                       " is not a vector; give two dim names");
  const index_t n = static_cast<index_t>(d.size());
  if (n > 1 && d.innerStride() != 1)
    raise<shape_error>("borrow: the Eigen vector has inner stride ", d.innerStride(), "; copy it first");
  return Shape{Dim(name, n)};
}
}  // namespace detail

/// Whether an Eigen expression's elements sit in addressable memory (a
/// Matrix, a Map, a Block of one), so that borrow can view them.
template <class Derived>
inline constexpr bool has_direct_access_v = (int(Derived::Flags) & Eigen::DirectAccessBit) != 0;

/// x as a row-major (prod rows) x (prod cols) matrix over x's memory:
/// [rows..., cols...] -> Map (read-only for a const x).
/// Throws shape_error unless rows and cols are x's dims, in its memory order.
template <class T>
MatrixMap<T> as_matrix(Tensor<T>& x, const Names& rows, const Names& cols) {
  const auto rc = detail::matrix_dims(x.shape(), rows, cols);
  return MatrixMap<T>(x.data(), rc.first, rc.second);
}
template <class T, std::enable_if_t<!std::is_const<T>::value, int> = 0>
MatrixMap<T> as_matrix(const TensorView<T>& x, const Names& rows, const Names& cols) {
  const auto rc = detail::matrix_dims(x.shape(), rows, cols);
  return MatrixMap<T>(x.data(), rc.first, rc.second);
}
template <class T>
ConstMatrixMap<T> as_matrix(const TensorView<const T>& x, const Names& rows, const Names& cols) {
  const auto rc = detail::matrix_dims(x.shape(), rows, cols);
  return ConstMatrixMap<T>(x.data(), rc.first, rc.second);
}

/// A tensor over a contiguous Eigen matrix (no copy), dims in storage order:
/// row-major -> [rows, cols], column-major -> [cols, rows]. Writable when m
/// has write access.
/// Throws shape_error if m is not contiguous or rows == cols.
template <class Derived, std::enable_if_t<has_direct_access_v<Derived>, int> = 0>
auto borrow(Eigen::DenseBase<Derived>& m, const std::string& rows, const std::string& cols) {
  Shape s = detail::eigen_shape(m, rows, cols);
  return borrow(m.derived().data(), std::move(s));
}
/// A read-only tensor over a const contiguous Eigen matrix (no copy), dims
/// in storage order as above: [rows, cols] or [cols, rows].
/// Throws shape_error if m is not contiguous or rows == cols.
template <class Derived, std::enable_if_t<has_direct_access_v<Derived>, int> = 0>
TensorView<const typename Derived::Scalar> borrow(const Eigen::DenseBase<Derived>& m, const std::string& rows,
                                                  const std::string& cols) {
  Shape s = detail::eigen_shape(m, rows, cols);
  const typename Derived::Scalar* p = m.derived().data();
  return borrow(p, std::move(s));
}
/// A rank-1 tensor [name] over an Eigen vector (no copy).
/// Throws shape_error if v is not contiguous.
template <class Derived, std::enable_if_t<has_direct_access_v<Derived>, int> = 0>
auto borrow(Eigen::DenseBase<Derived>& v, const std::string& name) {
  Shape s = detail::eigen_vector_shape(v, name);
  return borrow(v.derived().data(), std::move(s));
}
/// A read-only rank-1 tensor [name] over a const Eigen vector (no copy).
/// Throws shape_error if v is not contiguous.
template <class Derived, std::enable_if_t<has_direct_access_v<Derived>, int> = 0>
TensorView<const typename Derived::Scalar> borrow(const Eigen::DenseBase<Derived>& v, const std::string& name) {
  Shape s = detail::eigen_vector_shape(v, name);
  const typename Derived::Scalar* p = v.derived().data();
  return borrow(p, std::move(s));
}

}  // namespace einmoe
