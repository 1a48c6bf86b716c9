// einmoe/ops/cumsum.hpp - cumulative sum along a named dim, in O(n).
//
// Example:
//   auto c = cumsum(x, "group");         // c[i] = x[0] + ... + x[i], x's shape
//   auto e = cumsum(x, "group", true);   // exclusive: e[i] = x[0] + ... + x[i-1]
//
// Sums run sequentially in T, so integer counts are exact at any size (and
// float counts are exact up to 2^24). Mesh TF's cumsum was a matmul in
// bfloat16 that went wrong past 256; this one does not.
#pragma once

#include <vector>

#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/axis.hpp"

namespace einmoe {

/// [x.shape] -> [x.shape], running sums along `dim`.
/// Throws shape_error if x lacks `dim`.
template <class T>
Tensor<T> cumsum(const TensorView<const T>& x, const std::string& dim, bool exclusive = false) {
  const detail::AxisSplit ax(x.shape(), dim, "cumsum");
  Tensor<T> out(x.shape(), uninitialized);
  std::vector<T> run(detail::uz(ax.inner));
  for (index_t o = 0; o < ax.outer; ++o) {
    std::fill(run.begin(), run.end(), T(0));
    for (index_t i = 0; i < ax.n; ++i) {
      const T* xi = x.data() + ax.at(o, i, 0);
      T* oi = out.data() + ax.at(o, i, 0);
      for (index_t k = 0; k < ax.inner; ++k) {
        const T v = xi[k];
        if (exclusive) {
          oi[k] = run[detail::uz(k)];
          run[detail::uz(k)] = static_cast<T>(run[detail::uz(k)] + v);
        } else {
          run[detail::uz(k)] = static_cast<T>(run[detail::uz(k)] + v);
          oi[k] = run[detail::uz(k)];
        }
      }
    }
  }
  return out;
}

}  // namespace einmoe
