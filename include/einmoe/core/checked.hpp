// einmoe/core/checked.hpp - size arithmetic that cannot overflow silently,
// and the machine's memory as an upper bound for one request.
//
// Every product or sum of sizes in einmoe goes through these helpers; an
// overflow is a shape_error naming what was being sized, and a request for
// more bytes than the machine's physical memory is a resource_error with the
// size, raised before anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include <memory>
#include <new>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "einmoe/core/error.hpp"

namespace einmoe::detail {

using size_int = std::int64_t;

/// a * b for non-negative a, b; shape_error "<what>: size overflow (a x b)".
template <class... What>
size_int mul_size(size_int a, size_int b, const What&... what) {
  size_int r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    raise<shape_error>(what..., ": size overflow (", a, " x ", b, " does not fit in 64 bits)");
  return r;
}

/// a + b for non-negative a, b, checked like mul_size.
/// Throws shape_error naming `what` on overflow or a negative operand.
template <class... What>
size_int add_size(size_int a, size_int b, const What&... what) {
  size_int r = 0;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r))
    raise<shape_error>(what..., ": size overflow (", a, " + ", b, " does not fit in 64 bits)");
  return r;
}

/// The machine's physical memory in bytes (0 when unknown: no limit).
/// Never throws.
inline std::uint64_t physical_memory_bytes() {
  static const std::uint64_t bytes = [] {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGE_SIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
#endif
    return std::uint64_t{0};
  }();
  return bytes;
}

/// Human-readable byte count: "1.5 GiB".
/// Throws nothing but std::bad_alloc.
inline std::string format_bytes(long double b) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) b /= 1024, ++u;
  std::ostringstream os;
  os.precision(u == 0 ? 0 : 3);
  os << std::fixed << b << ' ' << units[u];
  return os.str();
}

/// resource_error unless `bytes` fit in the machine's physical memory.
template <class... What>
void check_memory(long double bytes, const What&... what) {
  const std::uint64_t phys = physical_memory_bytes();
  if (phys != 0 && bytes > static_cast<long double>(phys))
    raise<resource_error>(what..., ": needs ", format_bytes(bytes), ", more than this machine's ",
                          format_bytes(static_cast<long double>(phys)), " of memory");
}

/// Bytes for n elements of `elem` bytes each; shape_error on overflow and
/// resource_error when more than the machine's physical memory.
template <class... What>
std::size_t bytes_for(size_int n, std::size_t elem, const What&... what) {
  const size_int bytes = mul_size(n, static_cast<size_int>(elem), what...);
  check_memory(static_cast<long double>(bytes), what...);
  return static_cast<std::size_t>(bytes);
}

/// A buffer of `bytes` for weights that are read at the memory's speed: 64-byte
/// aligned, and when large, 2 MiB aligned and backed by transparent huge
/// pages where the OS offers them (fewer TLB misses while streaming, and one
/// page fault per 2 MiB when it is first written).
/// Throws std::bad_alloc when the memory is not there.
inline std::shared_ptr<void> allocate_weights(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  constexpr std::size_t huge = std::size_t{1} << 21;
  const std::size_t align = bytes >= huge ? huge : 64;
  const std::size_t rounded = bytes >= huge ? (bytes + huge - 1) / huge * huge : bytes;
  void* p = ::operator new (rounded, std::align_val_t{align});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align == huge) (void)madvise(p, rounded, MADV_HUGEPAGE);  // a hint; failure is harmless
#endif
  return std::shared_ptr<void>(p, [align](void* q) { ::operator delete (q, std::align_val_t{align}); });
}

}  // namespace einmoe::detail
