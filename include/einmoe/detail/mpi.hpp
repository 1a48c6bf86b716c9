// einmoe/detail/mpi.hpp - MPI helpers of the expert-parallel layer: error
// checks, agreeing on errors before any data moves (so no rank is left in a
// collective), checked message counts. Internal.
#pragma once

#include <mpi.h>

#include <climits>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "einmoe/core/dim.hpp"
#include "einmoe/core/error.hpp"
#include "einmoe/core/checked.hpp"

namespace einmoe {
namespace detail {

inline void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, msg, &n);
    raise<error>("expert parallel: ", what, " failed: ", std::string(msg, static_cast<std::size_t>(n)));
  }
}

/// Every rank learns whether all succeeded; if not, all throw the message of
/// the lowest failing rank (prefixed with its rank).
inline void agree(MPI_Comm comm, const std::string& failure, bool shape) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int mine = failure.empty() ? size : rank, first = size;
  mpi_check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
  if (first == size) return;
  int len = rank == first ? static_cast<int>(failure.size()) : 0;
  mpi_check(MPI_Bcast(&len, 1, MPI_INT, first, comm), "MPI_Bcast");
  std::string msg(static_cast<std::size_t>(len), '\0');
  if (rank == first) msg = failure;
  mpi_check(MPI_Bcast(msg.data(), len, MPI_CHAR, first, comm), "MPI_Bcast");
  const std::string text = "rank " + std::to_string(first) + ": " + msg;
  if (shape) raise<shape_error>(text);
  raise<value_error>(text);
}

template <class F>
void agreed(MPI_Comm comm, F&& f) {
  std::string failure;
  bool shape = false;
  try {
    f();
  } catch (const shape_error& e) {
    failure = e.what(), shape = true;
  } catch (const error& e) {
    failure = e.what();
  } catch (const std::bad_alloc&) {
    failure = "out of memory";
  }
  agree(comm, failure, shape);
}

template <class T>
MPI_Datatype mpi_type() {
  return std::is_same<T, float>::value ? MPI_FLOAT : MPI_DOUBLE;
}

inline int mpi_count(index_t n, const char* what) {
  if (n > INT_MAX) raise<resource_error>("expert parallel: ", n, " ", what, " in one message (at most 2^31 - 1)");
  return static_cast<int>(n);
}

/// Allgathers n values of every rank (rank order) into out.
template <class V>
void allgather_v(MPI_Comm comm, const std::vector<V>& mine, std::vector<V>& out, MPI_Datatype type) {
  int size = 1;
  MPI_Comm_size(comm, &size);
  int n = mpi_count(static_cast<index_t>(mine.size()), "values");
  std::vector<int> counts(uz(size)), displs(uz(size));
  mpi_check(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, comm), "MPI_Allgather");
  index_t total = 0;
  for (int r = 0; r < size; ++r) displs[uz(r)] = mpi_count(total, "values"), total += counts[uz(r)];
  out.resize(uz(total));
  mpi_check(MPI_Allgatherv(mine.data(), n, type, out.data(), counts.data(), displs.data(), type, comm), "MPI_Allgatherv");
}

}  // namespace detail

}  // namespace einmoe
