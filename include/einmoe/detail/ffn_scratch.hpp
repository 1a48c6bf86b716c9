// einmoe/detail/ffn_scratch.hpp - the kernels' scratch memory: 64-byte
// aligned vectors that only grow, one set per thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <new>
#include <vector>

#include "einmoe/core/checked.hpp"
#include "einmoe/core/dim.hpp"
#include "einmoe/core/threads.hpp"

namespace einmoe::detail {

/// A std::allocator that aligns to 64 bytes: kernel buffers always start at
/// the same alignment, so no kernel's arithmetic can depend on where malloc
/// put them (Eigen's small products peel by alignment).
template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}  // NOLINT
  T* allocate(std::size_t n) {
    return static_cast<T*>(
        ::operator new (bytes_for(static_cast<index_t>(n), sizeof(T), "scratch"), std::align_val_t{64}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete (p, std::align_val_t{64}); }
  template <class U>
  bool operator==(const Aligned64<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const Aligned64<U>&) const {
    return false;
  }
};

/// A vector whose data is 64-byte aligned.
template <class T>
using AlignedVector = std::vector<T, Aligned64<T>>;

/// Scratch memory of the FFN kernels (ffn_rows, the decode path); buffers only grow, so a steady state
/// allocates nothing. One per thread.
template <class T>
struct FfnScratch {
  AlignedVector<T> h, u;                  // hidden [m, H]; the GLU's linear half [m, H]
  AlignedVector<T> xa, ya;                // input / output rows, when the caller's are not 64-byte aligned
  AlignedVector<std::uint16_t> xb, hb;    // bf16 rows
  AlignedVector<std::uint8_t> xq, hq;     // int8 rows (+128)
  AlignedVector<float> xs, hs;            // int8 row scales
  AlignedVector<std::int32_t> acc, acc2;  // int32 accumulators
  AlignedVector<float> wf, wf2;           // Eigen: a bf16 matrix widened to fp32; rows rounded to bf16
  AlignedVector<std::int32_t> wi, xi;     // Eigen: int8 matrix / rows widened to int32
  AlignedVector<float> xp, hp;            // decode path: rows padded to the packed layout's K
  AlignedVector<unsigned char> pad;       // oneDNN scratchpad

  template <class V>
  static typename V::value_type* get(V& v, index_t n) {
    if (static_cast<index_t>(v.size()) < n) v.resize(uz(n));
    return v.data();
  }

  /// Calls f(buffer) for every buffer, in a fixed order.
  template <class F>
  static void each_member(F&& f) {
    f(&FfnScratch::h), f(&FfnScratch::u), f(&FfnScratch::xa), f(&FfnScratch::ya), f(&FfnScratch::xb);
    f(&FfnScratch::hb), f(&FfnScratch::xq), f(&FfnScratch::hq), f(&FfnScratch::xs), f(&FfnScratch::hs);
    f(&FfnScratch::acc), f(&FfnScratch::acc2), f(&FfnScratch::wf), f(&FfnScratch::wf2), f(&FfnScratch::wi);
    f(&FfnScratch::xi), f(&FfnScratch::xp), f(&FfnScratch::hp), f(&FfnScratch::pad);
  }
};

/// Makes `n` per-thread scratch sets and grows each buffer of each to the
/// largest size that buffer has in any set. Call it before a parallel loop
/// whose items are handed out dynamically: what one thread grew to in an
/// earlier call, every thread then has, so a steady state allocates nothing
/// whichever thread takes which item.
template <class T>
void prepare_thread_scratch(std::vector<FfnScratch<T>>& all, int n) {
  if (static_cast<int>(all.size()) < n) all.resize(uz(n));
  FfnScratch<T>::each_member([&](auto member) {
    equalize_buffers(
        all, [member](FfnScratch<T> & s) -> auto& { return s.*member; });
  });
}

/// Hidden-layer dropout (training-mode parity with the sources): element j
/// of row r is kept iff Rng::uniform_at(seed, first[r] + j) >= rate, and
/// scaled by 1 / (1 - rate). fp32 precision only.
struct HiddenDropout {
  double rate = 0.0;
  std::uint64_t seed = 0;
  const index_t* first = nullptr;  ///< per row: the index of its first hidden element
};

}  // namespace einmoe::detail
