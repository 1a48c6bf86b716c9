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

#include "einmoe/core/checked.hpp"
#include "einmoe/core/dim.hpp"
#include "einmoe/core/error.hpp"

namespace einmoe {
namespace detail {

/// mpi_error naming the call unless rc is MPI_SUCCESS.
inline void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, msg, &n);
    raise<mpi_error>("expert parallel: ", what, " failed: ", std::string(msg, static_cast<std::size_t>(n)));
  }
}

/// The einmoe exception types, as numbers that travel between ranks.
enum class ErrorKind : int { none, shape, value, resource, io, not_found, mpi, other };

[[noreturn]] inline void raise_kind(ErrorKind k, const std::string& text) {
  switch (k) {
    case ErrorKind::shape: raise<shape_error>(text);
    case ErrorKind::value: raise<value_error>(text);
    case ErrorKind::resource: raise<resource_error>(text);
    case ErrorKind::not_found: raise<not_found_error>(text);
    case ErrorKind::io: raise<io_error>(text);
    case ErrorKind::mpi: raise<mpi_error>(text);
    default: raise<error>(text);
  }
}

/// Every rank learns whether all succeeded; if not, all throw the message of
/// the lowest failing rank (prefixed with its rank), as the type it failed
/// with. Collective.
inline void agree(MPI_Comm comm, const std::string& failure, ErrorKind kind) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int mine = failure.empty() ? size : rank, first = size;
  mpi_check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
  if (first == size) return;
  int head[2] = {rank == first ? static_cast<int>(failure.size()) : 0, static_cast<int>(kind)};
  mpi_check(MPI_Bcast(head, 2, MPI_INT, first, comm), "MPI_Bcast");
  std::string msg(static_cast<std::size_t>(head[0]), '\0');
  if (rank == first) msg = failure;
  mpi_check(MPI_Bcast(msg.data(), head[0], MPI_CHAR, first, comm), "MPI_Bcast");
  raise_kind(static_cast<ErrorKind>(head[1]), "rank " + std::to_string(first) + ": " + msg);
}

/// Runs f on every rank and agrees on the outcome (agree), so that an error
/// on one rank is an error on all, never a rank left in a collective.
template <class F>
void agreed(MPI_Comm comm, F&& f) {
  std::string failure;
  ErrorKind kind = ErrorKind::none;
  try {
    f();
  } catch (const shape_error& e) {
    failure = e.what(), kind = ErrorKind::shape;
  } catch (const value_error& e) {
    failure = e.what(), kind = ErrorKind::value;
  } catch (const resource_error& e) {
    failure = e.what(), kind = ErrorKind::resource;
  } catch (const not_found_error& e) {
    failure = e.what(), kind = ErrorKind::not_found;
  } catch (const io_error& e) {
    failure = e.what(), kind = ErrorKind::io;
  } catch (const mpi_error& e) {
    failure = e.what(), kind = ErrorKind::mpi;
  } catch (const error& e) {
    failure = e.what(), kind = ErrorKind::other;
  } catch (const std::bad_alloc&) {
    failure = "out of memory", kind = ErrorKind::resource;
  }
  agree(comm, failure, kind);
}

template <class T>
MPI_Datatype mpi_type() {
  return std::is_same<T, float>::value ? MPI_FLOAT : MPI_DOUBLE;
}

/// n as an MPI count; resource_error beyond 2^31 - 1.
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
  mpi_check(MPI_Allgatherv(mine.data(), n, type, out.data(), counts.data(), displs.data(), type, comm),
            "MPI_Allgatherv");
}

}  // namespace detail

}  // namespace einmoe
