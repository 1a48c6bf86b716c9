// einmoe/detail/strided.hpp - the loop nest behind elementwise ops,
// reductions and transposes.
//
// A StridedLoop walks an index space `sizes` once, carrying K offsets (one per
// operand) that advance by per-dim strides; a stride of 0 broadcasts. Adjacent
// dims that are contiguous for every operand are merged and size-1 dims
// dropped first, so the innermost loop is as long as possible.
#pragma once

#include <array>
#include <cstddef>
#include <vector>

#include "einmoe/core/dim.hpp"

namespace einmoe::detail {

template <std::size_t K>
struct StridedLoop {
  std::vector<index_t> sizes;
  std::array<std::vector<index_t>, K> strides;

  index_t count() const {
    index_t n = 1;
    for (index_t s : sizes) n *= s;
    return n;
  }

  /// Drops size-1 dims and merges dims i, i+1 that are contiguous for all
  /// operands (stride[i] == stride[i+1] * size[i+1]).
  void simplify() {
    std::vector<index_t> ns;
    std::array<std::vector<index_t>, K> nst;
    for (std::size_t d = 0; d < sizes.size(); ++d) {
      if (sizes[d] == 1) continue;
      if (!ns.empty()) {
        bool merge = true;
        for (std::size_t k = 0; k < K; ++k) merge = merge && (nst[k].back() == strides[k][d] * sizes[d]);
        if (merge) {
          ns.back() *= sizes[d];
          for (std::size_t k = 0; k < K; ++k) nst[k].back() = strides[k][d];
          continue;
        }
      }
      ns.push_back(sizes[d]);
      for (std::size_t k = 0; k < K; ++k) nst[k].push_back(strides[k][d]);
    }
    sizes = std::move(ns);
    strides = std::move(nst);
  }

  /// Calls row(n, base, step) for each innermost row: n elements whose k-th
  /// operand offsets are base[k] + i * step[k], i < n.
  template <class Row>
  void for_each_row(Row&& row) {
    if (count() == 0) return;
    simplify();
    const std::size_t r = sizes.size();
    std::array<index_t, K> base{};
    std::array<index_t, K> step{};
    if (r == 0) {
      row(index_t{1}, base, step);
      return;
    }
    for (std::size_t k = 0; k < K; ++k) step[k] = strides[k][r - 1];
    const index_t inner = sizes[r - 1];
    std::vector<index_t> ctr(r, 0);
    for (;;) {
      row(inner, base, step);
      // advance the outer counter (dims 0..r-2) with carry
      std::size_t d = r - 1;
      for (;;) {
        if (d == 0) return;
        --d;
        ++ctr[d];
        for (std::size_t k = 0; k < K; ++k) base[k] += strides[k][d];
        if (ctr[d] < sizes[d]) break;
        for (std::size_t k = 0; k < K; ++k) base[k] -= strides[k][d] * sizes[d];
        ctr[d] = 0;
      }
    }
  }
};

/// Strides of `operand` laid out along the dims of `space`: the operand's own
/// stride for dims it has, 0 (broadcast) for dims it lacks.
inline std::vector<index_t> strides_in(const Shape& operand, const Shape& space) {
  const auto own = operand.strides();
  std::vector<index_t> out(uz(space.rank()), 0);
  for (index_t i = 0; i < space.rank(); ++i) {
    const index_t j = operand.index_of(space[i].name);
    if (j >= 0) out[uz(i)] = own[uz(j)];
  }
  return out;
}

inline std::vector<index_t> sizes_of(const Shape& s) {
  std::vector<index_t> out;
  for (const auto& d : s) out.push_back(d.size);
  return out;
}

}  // namespace einmoe::detail
