// einmoe/detail/gemm.hpp - batched GEMM on Eigen Maps over einmoe buffers.
//
// C[b] = A[b] * B[b] for b < batch, where each matrix may be stored row- or
// column-major (a column-major m x k map of a row-major k x m buffer is its
// transpose, so transposed operands cost no copy).
//
// Every GEMM in einmoe goes through gemm_batched, so its Eigen kernels are
// the bulk of einmoe's compile time. A project with many translation units
// can compile them once: define EINMOE_EXTERN_GEMM everywhere, and in one
// source file write EINMOE_INSTANTIATE_GEMM(float) (and double, ...).
#pragma once

#include <Eigen/Core>

#include "einmoe/core/dim.hpp"

namespace einmoe::detail {

struct MatLayout {
  bool row_major = true;  // false: the buffer holds the transpose, row-major
};

template <class T, int Order>
using CMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Order>>;
template <class T, int Order>
using MMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Order>>;

template <class T, int OA, int OB, int OC>
void gemm_batched_impl(index_t batch, index_t m, index_t n, index_t k, const T* a, const T* b, T* c) {
  const index_t sa = m * k, sb = k * n, sc = m * n;
  auto one = [&](index_t i) {
    MMap<T, OC> C(c + i * sc, m, n);
    if (k == 0) {
      C.setZero();
      return;
    }
    CMap<T, OA> A(a + i * sa, m, k);
    CMap<T, OB> B(b + i * sb, k, n);
    C.noalias() = A * B;
  };
  // Many small products: spread the batch over threads (Eigen then runs each
  // product on one thread). Few large ones: let Eigen parallelize each GEMM.
#if defined(_OPENMP)
  const bool outer = batch > 1 && m * n * k < (index_t{1} << 24);
#pragma omp parallel for schedule(static) if (outer)
  for (index_t i = 0; i < batch; ++i) one(i);
#else
  for (index_t i = 0; i < batch; ++i) one(i);
#endif
}

/// C[b] (m x n) = A[b] (m x k) * B[b] (k x n), b < batch, contiguous batches.
template <class T>
void gemm_batched(index_t batch, index_t m, index_t n, index_t k, const T* a, MatLayout la, const T* b, MatLayout lb,
                  T* c, MatLayout lc) {
  if (batch == 0 || m == 0 || n == 0) return;
  constexpr int R = Eigen::RowMajor, C = Eigen::ColMajor;
  const int key = (la.row_major ? 4 : 0) | (lb.row_major ? 2 : 0) | (lc.row_major ? 1 : 0);
  switch (key) {
    case 7: gemm_batched_impl<T, R, R, R>(batch, m, n, k, a, b, c); break;
    case 6: gemm_batched_impl<T, R, R, C>(batch, m, n, k, a, b, c); break;
    case 5: gemm_batched_impl<T, R, C, R>(batch, m, n, k, a, b, c); break;
    case 4: gemm_batched_impl<T, R, C, C>(batch, m, n, k, a, b, c); break;
    case 3: gemm_batched_impl<T, C, R, R>(batch, m, n, k, a, b, c); break;
    case 2: gemm_batched_impl<T, C, R, C>(batch, m, n, k, a, b, c); break;
    case 1: gemm_batched_impl<T, C, C, R>(batch, m, n, k, a, b, c); break;
    default: gemm_batched_impl<T, C, C, C>(batch, m, n, k, a, b, c); break;
  }
}

}  // namespace einmoe::detail

/// Explicit instantiation of gemm_batched<T>, for one translation unit.
#define EINMOE_INSTANTIATE_GEMM(T)                                                                                  \
  template void einmoe::detail::gemm_batched<T>(einmoe::index_t, einmoe::index_t, einmoe::index_t, einmoe::index_t, \
                                                const T*, einmoe::detail::MatLayout, const T*,                      \
                                                einmoe::detail::MatLayout, T*, einmoe::detail::MatLayout)

#if defined(EINMOE_EXTERN_GEMM)
extern template void einmoe::detail::gemm_batched<float>(einmoe::index_t, einmoe::index_t, einmoe::index_t,
                                                         einmoe::index_t, const float*, einmoe::detail::MatLayout,
                                                         const float*, einmoe::detail::MatLayout, float*,
                                                         einmoe::detail::MatLayout);
extern template void einmoe::detail::gemm_batched<double>(einmoe::index_t, einmoe::index_t, einmoe::index_t,
                                                          einmoe::index_t, const double*, einmoe::detail::MatLayout,
                                                          const double*, einmoe::detail::MatLayout, double*,
                                                          einmoe::detail::MatLayout);
#endif
