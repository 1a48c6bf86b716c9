// einmoe/core/eigen_interop.hpp - a tensor viewed as an Eigen matrix (no copy).
//
//   // x: [batch=4, length=8, model=16]
//   auto m = einmoe::as_matrix(x, {"batch", "length"}, {"model"});  // 32 x 16 Map
//
// The row dims must be x's leading dims and the column dims the rest, both in
// x's order (transpose first otherwise): a Map cannot reorder memory.
#pragma once

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
}  // namespace detail

/// x as a row-major (prod rows) x (prod cols) matrix over x's memory.
template <class T>
MatrixMap<T> as_matrix(Tensor<T>& x, const Names& rows, const Names& cols) {
  const auto rc = detail::matrix_dims(x.shape(), rows, cols);
  return MatrixMap<T>(x.data(), rc.first, rc.second);
}
template <class T>
ConstMatrixMap<T> as_matrix(const Tensor<T>& x, const Names& rows, const Names& cols) {
  const auto rc = detail::matrix_dims(x.shape(), rows, cols);
  return ConstMatrixMap<T>(x.data(), rc.first, rc.second);
}

}  // namespace einmoe
