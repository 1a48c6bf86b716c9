// einmoe/detail/axis.hpp - a tensor seen as [outer, n, inner] around one dim.
#pragma once

#include "einmoe/core/dim.hpp"

namespace einmoe::detail {

/// Element (o, i, k) of the tensor sits at o * n * inner + i * inner + k,
/// where i runs along the chosen dim.
struct AxisSplit {
  index_t outer = 1, n = 1, inner = 1;
  index_t axis = 0;

  AxisSplit(const Shape& s, const std::string& dim, const char* op) {
    axis = s.require(dim, op);
    for (index_t j = 0; j < s.rank(); ++j) {
      if (j < axis) outer *= s[j].size;
      if (j > axis) inner *= s[j].size;
    }
    n = s[axis].size;
  }
  index_t at(index_t o, index_t i, index_t k) const { return (o * n + i) * inner + k; }
};

}  // namespace einmoe::detail
