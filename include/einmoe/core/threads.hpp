// einmoe/core/threads.hpp - how many threads einmoe's GEMMs and routing use.
//
// With OpenMP (the einmoe target's EINMOE_OPENMP option, on by default) the
// expert GEMMs and the routing loops run on num_threads() threads; without
// it everything runs on one thread and set_num_threads is a no-op.
//
//   einmoe::set_num_threads(1);   // e.g. for a single-thread benchmark
#pragma once

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "einmoe/core/error.hpp"

namespace einmoe {

/// Sets the thread count for OpenMP regions and Eigen's GEMM (n >= 1).
inline void set_num_threads(int n) {
  if (n < 1) detail::raise<value_error>("set_num_threads: ", n, " is not a positive thread count");
#if defined(_OPENMP)
  omp_set_num_threads(n);
  Eigen::setNbThreads(n);
#endif
}

/// The thread count parallel regions use (1 without OpenMP).
inline int num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// True when einmoe was compiled with OpenMP.
constexpr bool has_openmp() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

}  // namespace einmoe
