// einmoe/core/threads.hpp - how many threads einmoe's GEMMs and routing use.
//
// With OpenMP (the einmoe target's EINMOE_OPENMP option, on by default) the
// expert GEMMs and the routing loops run on num_threads() threads; without
// it everything runs on one thread and set_num_threads is a no-op.
//
// Example:
//   einmoe::set_num_threads(1);   // e.g. for a single-thread benchmark
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "einmoe/core/dim.hpp"
#include "einmoe/core/error.hpp"

namespace einmoe {

/// The largest thread count set_num_threads accepts.
inline constexpr int max_threads = 1024;

/// Sets the thread count for einmoe's parallel loops (and OpenMP regions of
/// the calling thread, which Eigen's GEMM follows), 1 <= n <= max_threads.
/// Throws value_error for n outside [1, max_threads].
inline void set_num_threads(int n) {
  if (n < 1 || n > max_threads)
    detail::raise<value_error>("set_num_threads: ", n, " is not a thread count in [1, ", max_threads, "]");
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

/// The thread count parallel regions use (1 without OpenMP).
/// Never throws.
inline int num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// True when einmoe was compiled with OpenMP.
/// Never throws.
constexpr bool has_openmp() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

namespace detail {

/// While alive, parallel code called from this thread (Eigen's GEMM, oneDNN
/// primitives, nested OpenMP) runs on this thread alone. Used around every
/// kernel call whose result must not depend on the thread count.
class SingleThread {
 public:
#if defined(_OPENMP)
  SingleThread() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThread() { omp_set_num_threads(saved_); }
#else
  SingleThread() = default;
#endif
  SingleThread(const SingleThread&) = delete;
  SingleThread& operator=(const SingleThread&) = delete;

 private:
#if defined(_OPENMP)
  int saved_;
#endif
};

/// Runs body(i) for i < n over the threads, each call single-threaded inside
/// (see SingleThread), items handed out dynamically. Which thread runs an
/// item never changes what the item computes. An exception thrown by an item
/// is rethrown here after the loop (the one of the lowest item index); it
/// never escapes the parallel region.
template <class Body>
void parallel_items(index_t n, Body&& body) {
#if defined(_OPENMP)
  std::exception_ptr failure;
  index_t failed_at = n;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
  for (index_t i = 0; i < n; ++i) {
    try {
      SingleThread one;
      body(i);
    } catch (...) {
#pragma omp critical(einmoe_parallel_items)
      if (i < failed_at) failed_at = i, failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
#else
  for (index_t i = 0; i < n; ++i) body(i);
#endif
}

/// Grows get(e) of every element e of `all` (a buffer: a vector) to the
/// largest size any element's has; never shrinks. Per-thread buffers
/// before a loop of parallel_items: what one thread grew to, every thread
/// then has.
template <class Elems, class Get>
void equalize_buffers(Elems& all, Get get) {
  std::size_t n = 0;
  for (auto& e : all) n = std::max(n, get(e).size());
  for (auto& e : all)
    if (get(e).size() < n) get(e).resize(n);
}

/// The index of the calling thread within the current parallel region (0
/// outside one).
inline int thread_index() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace detail

}  // namespace einmoe
