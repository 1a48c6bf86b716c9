// einmoe/kernels/ffn.hpp - the expert feed-forward network on a block of
// rows, for every backend and precision.
//
// Example:
//   const FfnKernel<float>& f = packed.kernel();   // banks laid out once (PackedExperts, experts/experts.hpp)
//   FfnScratch<float> s;                           // per thread, reused
//   ffn_rows(f, e, x, m, y, s);                    // y [m, model] = FFN_e(x [m, model]), m <= f.row_block()
//
// The FFN of expert e is
//   plain:  y = act(x . up[e] + b_up[e]) . down[e] + b_down[e]
//   gated:  y = (act(x . gate[e] + b_gate[e]) * (x . up[e] + b_up[e])) . down[e] + b_down[e]
// (SwiGLU with act = silu, GeGLU with gelu / gelu_tanh; biases optional).
//
// Each call is single-threaded: its result depends only on the rows, the
// expert and the row count, never on how many threads the program runs or
// which one runs the call. Callers parallelize over (expert, block) items.
//
// Where the precisions round (kernels/precision.hpp has the definitions):
// bf16 rounds x and the hidden layer to bfloat16; int8 quantizes x and the
// hidden layer per row. On oneDNN the bias, activation and gate multiply of
// the first layer run inside the GEMM (post-ops); the int8 epilogue
// (dequantize, bias, activation, requantize) runs in einmoe's own vector code.
#pragma once

#include <algorithm>
#include <cstdint>
#include <new>
#include <vector>

#include <Eigen/Core>

#include "einmoe/core/random.hpp"
#include "einmoe/core/threads.hpp"
#include "einmoe/detail/dnnl.hpp"
#include "einmoe/detail/simd.hpp"
#include "einmoe/kernels/activation.hpp"
#include "einmoe/kernels/matrix_bank.hpp"

namespace einmoe {

/// The laid-out weights of a bank of expert FFNs (immutable once built).
template <class T>
struct FfnKernel {
  MatrixBank<T> up;                    ///< [E][model, hidden]: the plain FFN's first layer, the GLU's linear half
  MatrixBank<T> gate;                  ///< [E][model, hidden]: the GLU's gate (empty: not gated)
  MatrixBank<T> down;                  ///< [E][hidden, model]
  std::vector<T> b_up, b_gate, b_down; ///< [E * hidden], [E * hidden], [E * model], or empty
  Activation activation = Activation::relu;

  bool gated() const { return !gate.empty(); }
  index_t experts() const { return up.count(); }
  index_t model() const { return up.in(); }
  index_t hidden() const { return up.out(); }
  Precision precision() const { return up.precision(); }
  Backend backend() const { return up.backend(); }
  /// The most rows one ffn_rows call takes: callers split longer runs into
  /// blocks of this many (256 on oneDNN, 512 on Eigen, which repacks
  /// weights on every call).
  index_t row_block() const { return row_block_of(backend()); }
  static index_t row_block_of(Backend b) {
#if defined(EINMOE_HAS_DNNL)
    if (b == Backend::dnnl) return detail::dnnl_impl::kBlockRows;
#endif
    (void)b;
    return 512;
  }
  /// Bytes of weights held.
  std::size_t bytes() const {
    return up.bytes() + gate.bytes() + down.bytes() + (b_up.size() + b_gate.size() + b_down.size()) * sizeof(T);
  }
};

namespace detail {
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
    return static_cast<T*>(::operator new(bytes_for(static_cast<index_t>(n), sizeof(T), "scratch"), std::align_val_t{64}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{64}); }
  template <class U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <class U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};
}  // namespace detail

/// A vector whose data is 64-byte aligned.
template <class T>
using AlignedVector = std::vector<T, detail::Aligned64<T>>;

/// Scratch memory of ffn_rows; buffers only grow, so a steady state
/// allocates nothing. One per thread.
template <class T>
struct FfnScratch {
  AlignedVector<T> h, u;                 // hidden [m, H]; the GLU's linear half [m, H]
  AlignedVector<T> xa, ya;               // input / output rows, when the caller's are not 64-byte aligned
  AlignedVector<std::uint16_t> xb, hb;   // bf16 rows
  AlignedVector<std::uint8_t> xq, hq;    // int8 rows (+128)
  AlignedVector<float> xs, hs;           // int8 row scales
  AlignedVector<std::int32_t> acc, acc2; // int32 accumulators
  AlignedVector<float> wf, wf2;          // Eigen: a bf16 matrix widened to fp32; rows rounded to bf16
  AlignedVector<std::int32_t> wi, xi;    // Eigen: int8 matrix / rows widened to int32
  AlignedVector<float> xp, hp;           // decode path: rows padded to the packed layout's K
  AlignedVector<unsigned char> pad;      // oneDNN scratchpad

  template <class V>
  static typename V::value_type* get(V& v, index_t n) {
    if (static_cast<index_t>(v.size()) < n) v.resize(detail::uz(n));
    return v.data();
  }
};

/// Hidden-layer dropout (training-mode parity with the sources): element j
/// of row r is kept iff Rng::uniform_at(seed, first[r] + j) >= rate, and
/// scaled by 1 / (1 - rate). fp32 precision only.
struct HiddenDropout {
  double rate = 0.0;
  std::uint64_t seed = 0;
  const index_t* first = nullptr;  ///< per row: the index of its first hidden element
};

namespace detail {

template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using CMapR = Eigen::Map<const RowMajor<T>>;
template <class T>
using MMapR = Eigen::Map<RowMajor<T>>;

template <class T>
void add_bias_rows(T* y, index_t m, index_t n, const T* b) {
  if (!b) return;
  for (index_t r = 0; r < m; ++r)
    for (index_t j = 0; j < n; ++j) y[r * n + j] += b[j];
}

template <class T>
void dropout_rows(T* h, index_t m, index_t H, const HiddenDropout* d) {
  if (!d || d->rate <= 0.0) return;
  const T scale = static_cast<T>(1.0 / (1.0 - d->rate));
  for (index_t r = 0; r < m; ++r)
    for (index_t j = 0; j < H; ++j) {
      T& v = h[r * H + j];
      v = Rng::uniform_at(d->seed, static_cast<std::uint64_t>(d->first[r] + j)) >= d->rate ? v * scale : T(0);
    }
}

/// x, or a copy of its m x k values in 64-byte aligned scratch when x is not
/// so aligned.
template <class T>
const T* aligned_rows(const T* x, index_t m, index_t k, AlignedVector<T>& scratch) {
  if (reinterpret_cast<std::uintptr_t>(x) % 64 == 0) return x;
  T* a = FfnScratch<T>::get(scratch, m * k);
  std::copy(x, x + m * k, a);
  return a;
}

/// bias pointer of expert e, or null
template <class T>
const T* bias_of(const std::vector<T>& b, index_t e, index_t n) {
  return b.empty() ? nullptr : b.data() + e * n;
}

/// Eigen: y [m, n] = x [m, k] . W where W is bank matrix e as T (fp32 banks
/// directly; bf16 banks widened into scratch). x must be 64-byte aligned; y
/// is computed in aligned scratch when it is not (Eigen's small products
/// assign outputs to packets by alignment).
template <class T>
void eigen_gemm(const MatrixBank<T>& w, index_t e, const T* x, index_t m, T* y, FfnScratch<T>& s) {
  const index_t k = w.in(), n = w.out();
  const bool direct = reinterpret_cast<std::uintptr_t>(y) % 64 == 0;
  T* out = direct ? y : FfnScratch<T>::get(s.ya, m * n);
  MMapR<T> Y(out, m, n);
  if (k == 0) {
    Y.setZero();
  } else {
    const T* wp = static_cast<const T*>(w.data(e));
    if constexpr (std::is_same<T, float>::value) {
      if (w.precision() == Precision::bf16) {
        float* wf = FfnScratch<T>::get(s.wf, k * n);
        simd::from_bf16(static_cast<const std::uint16_t*>(w.data(e)), k * n, wf);
        wp = wf;
      }
    }
    Y.noalias() = CMapR<T>(x, m, k) * CMapR<T>(wp, k, n);
  }
  if (!direct) std::copy(out, out + m * n, y);
}

/// Eigen, int8: acc [m, n] = (xq - 128) . W (exact int32).
inline void eigen_gemm_int8(const MatrixBank<float>& w, index_t e, const std::uint8_t* xq, index_t m,
                            std::int32_t* acc, AlignedVector<std::int32_t>& xi, AlignedVector<std::int32_t>& wi) {
  const index_t k = w.in(), n = w.out();
  MMapR<std::int32_t> A(acc, m, n);
  if (k == 0) {
    A.setZero();
    return;
  }
  std::int32_t* x32 = FfnScratch<float>::get(xi, m * k);
  for (index_t i = 0; i < m * k; ++i) x32[i] = static_cast<std::int32_t>(xq[i]) - 128;
  std::int32_t* w32 = FfnScratch<float>::get(wi, k * n);
  const std::int8_t* w8 = static_cast<const std::int8_t*>(w.data(e));
  for (index_t i = 0; i < k * n; ++i) w32[i] = w8[i];
  A.noalias() = CMapR<std::int32_t>(x32, m, k) * CMapR<std::int32_t>(w32, k, n);
}

/// Rounds n floats to bfloat16 and back, in place.
inline void round_bf16(float* x, index_t n, AlignedVector<std::uint16_t>& tmp) {
  std::uint16_t* b = FfnScratch<float>::get(tmp, n);
  simd::to_bf16(x, n, b);
  simd::from_bf16(b, n, x);
}

#if defined(EINMOE_HAS_DNNL)
/// One oneDNN matmul on bank matrix e.
template <class T>
void dnnl_gemm(const MatrixBank<T>& w, index_t e, dnnl_impl::Type src, const void* x, index_t m, dnnl_impl::Type dst,
               void* y, const same_t<T>* bias, int act, const float* mul, FfnScratch<T>& s) {
  using dnnl_impl::Type;
  const Type wt = w.precision() == Precision::fp32 ? Type::f32 : w.precision() == Precision::bf16 ? Type::bf16 : Type::s8;
  dnnl_impl::MatmulKey key{m, w.in(), w.out(), src, wt, dst, bias != nullptr, act, mul != nullptr, !w.packed()};
  const auto mm = dnnl_impl::matmul(key);
  void* pad = FfnScratch<T>::get(s.pad, static_cast<index_t>(mm->scratch));
  dnnl_impl::execute(*mm, x, w.data(e), y, reinterpret_cast<const float*>(bias), mul, pad);
}
#endif

/// int8 epilogue of the first layer: h = act(deq(acc_up)) or
/// act(deq(acc_gate)) * deq(acc_up), then quantized per row into hq / hs.
inline void int8_hidden(const FfnKernel<float>& f, index_t e, index_t m, FfnScratch<float>& s) {
  const index_t H = f.hidden();
  float* h = FfnScratch<float>::get(s.h, m * H);
  float* u = f.gated() ? FfnScratch<float>::get(s.u, m * H) : nullptr;
  std::uint8_t* hq = FfnScratch<float>::get(s.hq, m * H);
  float* hs = FfnScratch<float>::get(s.hs, m);
  for (index_t r = 0; r < m; ++r) {
    float* hr = h + r * H;
    if (f.gated()) {
      simd::dequantize(s.acc2.data() + r * H, H, f.gate.compensation(e), s.xs[detail::uz(r)], f.gate.scales(e),
                       bias_of(f.b_gate, e, H), hr);
      simd::activate(f.activation, hr, H);
      float* ur = u + r * H;
      simd::dequantize(s.acc.data() + r * H, H, f.up.compensation(e), s.xs[detail::uz(r)], f.up.scales(e),
                       bias_of(f.b_up, e, H), ur);
      simd::multiply(hr, ur, H);
    } else {
      simd::dequantize(s.acc.data() + r * H, H, f.up.compensation(e), s.xs[detail::uz(r)], f.up.scales(e),
                       bias_of(f.b_up, e, H), hr);
      simd::activate(f.activation, hr, H);
    }
    hs[r] = simd::quantize_row_u8(hr, H, hq + r * H);
  }
}

/// Whether the decode kernels take these rows (see detail/gemv.hpp).
inline bool decode_path(const FfnKernel<float>& f, index_t m) {
  return m <= gemv::kMaxRows && f.up.panel_in() > 0 && f.down.panel_in() > 0 && (!f.gated() || f.gate.panel_in() > 0);
}

/// The decode path in stages, so that one expert's projections can be cut
/// by panels over threads (ffn_decode_split): begin packs the rows; first
/// computes panels [p0, p1) of the first layer (the up bank's panels, then
/// the gate bank's); middle finishes and packs the hidden layer; second
/// computes panels [p0, p1) of the down bank; end writes y. Each panel's
/// columns are summed over k in the same order whichever call computes
/// them (detail/gemv.hpp), so every split gives ffn_decode's bits. After
/// begin, first and second only read the scratch's inputs and write their
/// own panels' columns, so one expert's calls may run concurrently.
namespace decode {

inline gemv::Kind kind_of(Precision p) {
  return p == Precision::fp32 ? gemv::Kind::f32 : p == Precision::bf16 ? gemv::Kind::bf16 : gemv::Kind::u8;
}
inline index_t first_panels(const FfnKernel<float>& f) {
  return f.up.panel_out() / 64 + (f.gated() ? f.gate.panel_out() / 64 : 0);
}
inline index_t second_panels(const FfnKernel<float>& f) { return f.down.panel_out() / 64; }

/// rows [m, n] -> [m, kpad] in the kernel's input type, zero-padded (u8:
/// quantized per row, scales[r]); into the scratch's x or hidden buffers.
inline void pack(gemv::Kind kind, const float* rows, index_t m, index_t n, index_t kpad, bool hidden,
                 FfnScratch<float>& s) {
  if (kind == gemv::Kind::f32) {
    float* xp = FfnScratch<float>::get(hidden ? s.hp : s.xp, m * kpad);
    for (index_t r = 0; r < m; ++r) {
      std::copy(rows + r * n, rows + (r + 1) * n, xp + r * kpad);
      std::fill(xp + r * kpad + n, xp + (r + 1) * kpad, 0.f);
    }
  } else if (kind == gemv::Kind::bf16) {
    std::uint16_t* xb = FfnScratch<float>::get(hidden ? s.hb : s.xb, m * kpad);
    for (index_t r = 0; r < m; ++r) {
      simd::to_bf16(rows + r * n, n, xb + r * kpad);
      std::fill(xb + r * kpad + n, xb + (r + 1) * kpad, std::uint16_t{0});
    }
  } else {
    std::uint8_t* q = FfnScratch<float>::get(hidden ? s.hq : s.xq, m * kpad);
    float* scales = FfnScratch<float>::get(hidden ? s.hs : s.xs, m);
    for (index_t r = 0; r < m; ++r) {
      scales[r] = simd::quantize_row_u8(rows + r * n, n, q + r * kpad);
      std::fill(q + r * kpad + n, q + (r + 1) * kpad, std::uint8_t{128});  // padded weights are 0 anyway
    }
  }
}
inline const void* packed(gemv::Kind kind, bool hidden, const FfnScratch<float>& s) {
  if (kind == gemv::Kind::f32) return hidden ? s.hp.data() : s.xp.data();
  if (kind == gemv::Kind::bf16) return static_cast<const void*>(hidden ? s.hb.data() : s.xb.data());
  return static_cast<const void*>(hidden ? s.hq.data() : s.xq.data());
}
/// Accumulators [m, panel_out] of a projection: up / down (0) or gate (1).
inline void* accumulators(gemv::Kind kind, int which, FfnScratch<float>& s) {
  if (kind == gemv::Kind::u8) return which == 0 ? static_cast<void*>(s.acc.data()) : static_cast<void*>(s.acc2.data());
  return which == 0 ? s.wf.data() : s.wf2.data();
}

/// Panels [p0, p1) of bank w for expert e: acc[:, p0*64, p1*64).
inline void project(gemv::Kind kind, const MatrixBank<float>& w, index_t e, const void* rows, index_t m, void* acc,
                    index_t p0, index_t p1) {
  if (p0 >= p1) return;
  const index_t steps = w.panel_in() / gemv::group(kind);
  const char* wp = static_cast<const char*>(w.data(e)) + p0 * steps * 256;
  char* yp = static_cast<char*>(acc) + p0 * 64 * 4;  // fp32 or int32 columns
  gemv::run(kind, rows, m, w.panel_in(), steps, wp, p1 - p0, yp, w.panel_out());
}

/// Packs x [m, model] and sizes every buffer the later stages write.
inline void begin(const FfnKernel<float>& f, const float* x, index_t m, FfnScratch<float>& s) {
  const gemv::Kind kind = kind_of(f.precision());
  const index_t outs = m * std::max(f.up.panel_out(), f.down.panel_out());
  const index_t gate_outs = f.gated() ? m * f.gate.panel_out() : 0;
  if (kind == gemv::Kind::u8) {
    FfnScratch<float>::get(s.acc, outs);
    FfnScratch<float>::get(s.acc2, gate_outs);
  } else {
    FfnScratch<float>::get(s.wf, outs);
    FfnScratch<float>::get(s.wf2, gate_outs);
  }
  pack(kind, x, m, f.model(), f.up.panel_in(), false, s);
}
inline void first(const FfnKernel<float>& f, index_t e, index_t m, FfnScratch<float>& s, index_t p0, index_t p1) {
  const gemv::Kind kind = kind_of(f.precision());
  const void* x = packed(kind, false, s);
  const index_t nu = f.up.panel_out() / 64;
  project(kind, f.up, e, x, m, accumulators(kind, 0, s), std::max<index_t>(p0, 0), std::min(p1, nu));
  if (f.gated()) project(kind, f.gate, e, x, m, accumulators(kind, 1, s), std::max<index_t>(p0 - nu, 0), p1 - nu);
}
inline void middle(const FfnKernel<float>& f, index_t e, index_t m, FfnScratch<float>& s) {
  const gemv::Kind kind = kind_of(f.precision());
  const index_t H = f.hidden();
  float* h = FfnScratch<float>::get(s.h, m * H);
  float* u = FfnScratch<float>::get(s.u, m * H);
  // bias (int8: dequantize), into h (plain) or u and h (gated: up, gate)
  auto finish = [&](const MatrixBank<float>& w, int which, const float* bias, float* out) {
    const void* acc = accumulators(kind, which, s);
    for (index_t r = 0; r < m; ++r) {
      if (kind == gemv::Kind::u8) {
        simd::dequantize(static_cast<const std::int32_t*>(acc) + r * w.panel_out(), H, w.compensation(e), s.xs[uz(r)],
                         w.scales(e), bias, out + r * H);
      } else {
        const float* a = static_cast<const float*>(acc) + r * w.panel_out();
        float* o = out + r * H;
        for (index_t j = 0; j < H; ++j) o[j] = bias ? a[j] + bias[j] : a[j];
      }
    }
  };
  finish(f.up, 0, bias_of(f.b_up, e, H), f.gated() ? u : h);
  if (f.gated()) finish(f.gate, 1, bias_of(f.b_gate, e, H), h);
  for (index_t r = 0; r < m; ++r) {
    simd::activate(f.activation, h + r * H, H);
    if (f.gated()) simd::multiply(h + r * H, u + r * H, H);
  }
  pack(kind, h, m, H, f.down.panel_in(), true, s);
}
inline void second(const FfnKernel<float>& f, index_t e, index_t m, FfnScratch<float>& s, index_t p0, index_t p1) {
  const gemv::Kind kind = kind_of(f.precision());
  project(kind, f.down, e, packed(kind, true, s), m, accumulators(kind, 0, s), p0, std::min(p1, second_panels(f)));
}
inline void end(const FfnKernel<float>& f, index_t e, index_t m, float* y, FfnScratch<float>& s) {
  const gemv::Kind kind = kind_of(f.precision());
  const index_t M = f.model(), po = f.down.panel_out();
  const float* b_down = bias_of(f.b_down, e, M);
  const void* acc = accumulators(kind, 0, s);
  for (index_t r = 0; r < m; ++r) {
    if (kind == gemv::Kind::u8) {
      simd::dequantize(static_cast<const std::int32_t*>(acc) + r * po, M, f.down.compensation(e), s.hs[uz(r)],
                       f.down.scales(e), b_down, y + r * M);
    } else {
      const float* a = static_cast<const float*>(acc) + r * po;
      for (index_t j = 0; j < M; ++j) y[r * M + j] = b_down ? a[j] + b_down[j] : a[j];
    }
  }
}

}  // namespace decode

/// The decode path: every projection streams its packed panels once.
inline void ffn_decode(const FfnKernel<float>& f, index_t e, const float* x, index_t m, float* y, FfnScratch<float>& s) {
  decode::begin(f, x, m, s);
  decode::first(f, e, m, s, 0, decode::first_panels(f));
  decode::middle(f, e, m, s);
  decode::second(f, e, m, s, 0, decode::second_panels(f));
  decode::end(f, e, m, y, s);
}

/// One decode-sized FFN call: expert `expert` on m <= gemv::kMaxRows rows,
/// writing y [m, model].
struct DecodeCall {
  index_t expert = 0, m = 0;
  float* y = nullptr;
};

/// Runs decode-sized calls with each projection cut into `parts` panel
/// ranges and the (call, range) pieces spread over the threads, so that a
/// decode step with a few experts keeps every thread streaming an equal
/// share of the weights (five parallel loops: pack, first layer, hidden,
/// second layer, outputs). rows_of(i, scratch) gives call i's rows [m,
/// model] (it may gather them into the scratch's xa). Each call's outputs
/// are bitwise ffn_decode's, whatever `parts` and the thread count.
template <class RowsOf>
void ffn_decode_split(const FfnKernel<float>& f, const std::vector<DecodeCall>& calls, index_t parts,
                      std::vector<FfnScratch<float>>& scratch, RowsOf&& rows_of) {
  const index_t n = static_cast<index_t>(calls.size());
  if (static_cast<index_t>(scratch.size()) < n) scratch.resize(uz(n));
  parts = std::max<index_t>(parts, 1);
  const index_t p1 = decode::first_panels(f), p2 = decode::second_panels(f);
  parallel_items(n, [&](index_t i) {
    const float* x = rows_of(i, scratch[uz(i)]);
    decode::begin(f, x, calls[uz(i)].m, scratch[uz(i)]);
  });
  parallel_items(mul_size(n, parts, "decode pieces"), [&](index_t u) {
    const DecodeCall& c = calls[uz(u / parts)];
    const index_t j = u % parts;
    decode::first(f, c.expert, c.m, scratch[uz(u / parts)], p1 * j / parts, p1 * (j + 1) / parts);
  });
  parallel_items(n, [&](index_t i) { decode::middle(f, calls[uz(i)].expert, calls[uz(i)].m, scratch[uz(i)]); });
  parallel_items(n * parts, [&](index_t u) {
    const DecodeCall& c = calls[uz(u / parts)];
    const index_t j = u % parts;
    decode::second(f, c.expert, c.m, scratch[uz(u / parts)], p2 * j / parts, p2 * (j + 1) / parts);
  });
  parallel_items(n, [&](index_t i) {
    const DecodeCall& c = calls[uz(i)];
    decode::end(f, c.expert, c.m, c.y, scratch[uz(i)]);
  });
}

template <class T>
void check_rows(const FfnKernel<T>& f, index_t e, index_t m, const char* op) {
  if (e < 0 || e >= f.experts()) raise<value_error>(op, ": expert ", e, " of ", f.experts());
  if (m < 0 || m > f.row_block()) raise<value_error>(op, ": ", m, " rows in one call (at most ", f.row_block(), ")");
}

}  // namespace detail

/// y [m, model] = FFN_e(x [m, model]) for m <= f.row_block() rows
/// (row-major, contiguous), single-threaded. `dropout` (fp32 only) drops
/// hidden elements as HiddenDropout says.
template <class T>
void ffn_rows(const FfnKernel<T>& f, index_t e, const T* x, index_t m, T* y, FfnScratch<T>& s,
              const HiddenDropout* dropout = nullptr) {
  detail::check_rows(f, e, m, "ffn_rows");
  if (m == 0) return;
  x = detail::aligned_rows(x, m, f.model(), s.xa);
  if (dropout && dropout->rate > 0.0 && f.precision() != Precision::fp32)
    detail::raise<value_error>("ffn_rows: dropout runs in fp32 precision only");
  [[maybe_unused]] detail::SingleThread one;
  const index_t M = f.model(), H = f.hidden();
  const T* b_up = detail::bias_of(f.b_up, e, H);
  const T* b_gate = detail::bias_of(f.b_gate, e, H);
  const T* b_down = detail::bias_of(f.b_down, e, M);
#if defined(EINMOE_HAS_DNNL)
  const bool dnnl = f.backend() == Backend::dnnl && M > 0 && H > 0;
#else
  [[maybe_unused]] const bool dnnl = false;
#endif

#if defined(EINMOE_HAS_DNNL)
  if constexpr (std::is_same<T, float>::value) {
    if (dnnl && !(dropout && dropout->rate > 0.0) && detail::decode_path(f, m)) {
      detail::ffn_decode(f, e, x, m, y, s);
      return;
    }
  }
#endif

  if constexpr (std::is_same<T, float>::value) {
    if (f.precision() == Precision::int8) {
      // Quantize the rows, one int32 GEMM per projection, then einmoe's own
      // epilogue (the same on both backends; Eigen multiplies the signed rows,
      // oneDNN the rows + 128 and subtracts the compensation).
      auto gemm = [&](const MatrixBank<float>& w, const std::uint8_t* q, std::int32_t* acc) {
#if defined(EINMOE_HAS_DNNL)
        if (dnnl) {
          using detail::dnnl_impl::Type;
          return detail::dnnl_gemm(w, e, Type::u8, q, m, Type::s32, acc, nullptr, -1, nullptr, s);
        }
#endif
        detail::eigen_gemm_int8(w, e, q, m, acc, s.xi, s.wi);
      };
      std::uint8_t* xq = FfnScratch<T>::get(s.xq, m * M);
      float* xs = FfnScratch<T>::get(s.xs, m);
      for (index_t r = 0; r < m; ++r) xs[r] = detail::simd::quantize_row_u8(x + r * M, M, xq + r * M);
      gemm(f.up, xq, FfnScratch<T>::get(s.acc, m * std::max(H, M)));
      if (f.gated()) gemm(f.gate, xq, FfnScratch<T>::get(s.acc2, m * H));
      detail::int8_hidden(f, e, m, s);
      gemm(f.down, s.hq.data(), s.acc.data());
      for (index_t r = 0; r < m; ++r)
        detail::simd::dequantize(s.acc.data() + r * M, M, f.down.compensation(e), s.hs[detail::uz(r)],
                                 f.down.scales(e), b_down, y + r * M);
      return;
    }
  }

#if defined(EINMOE_HAS_DNNL)
  if constexpr (std::is_same<T, float>::value) {
    if (dnnl) {
      // bias, activation and the gate multiply run inside the first GEMM
      using detail::dnnl_impl::Type;
      const int act = static_cast<int>(f.activation);
      const bool bf16 = f.precision() == Precision::bf16;
      const Type in = bf16 ? Type::bf16 : Type::f32;
      const void* xin = x;
      if (bf16) {
        std::uint16_t* xb = FfnScratch<T>::get(s.xb, m * M);
        detail::simd::to_bf16(x, m * M, xb);
        xin = xb;
      }
      void* h = bf16 ? static_cast<void*>(FfnScratch<T>::get(s.hb, m * H)) : FfnScratch<T>::get(s.h, m * H);
      if (f.gated()) {
        float* u = FfnScratch<T>::get(s.u, m * H);
        detail::dnnl_gemm(f.up, e, in, xin, m, Type::f32, u, b_up, -1, nullptr, s);
        detail::dnnl_gemm(f.gate, e, in, xin, m, in, h, b_gate, act, u, s);
      } else {
        detail::dnnl_gemm(f.up, e, in, xin, m, in, h, b_up, act, nullptr, s);
      }
      if (!bf16) detail::dropout_rows(static_cast<float*>(h), m, H, dropout);
      detail::dnnl_gemm(f.down, e, in, h, m, Type::f32, y, b_down, -1, nullptr, s);
      return;
    }
  }
#endif

  // Eigen (and oneDNN's degenerate sizes), fp32 or bf16.
  const bool bf16 = f.precision() == Precision::bf16;
  const T* xin = x;
  if constexpr (std::is_same<T, float>::value) {
    if (bf16) {
      float* xr = FfnScratch<T>::get(s.wf2, m * M);  // the rows rounded to bf16
      std::copy(x, x + m * M, xr);
      detail::round_bf16(xr, m * M, s.xb);
      xin = xr;
    }
  }
  T* h = FfnScratch<T>::get(s.h, m * H);
  detail::eigen_gemm(f.up, e, xin, m, h, s);
  detail::add_bias_rows(h, m, H, b_up);
  if (f.gated()) {
    T* u = FfnScratch<T>::get(s.u, m * H);
    std::copy(h, h + m * H, u);
    detail::eigen_gemm(f.gate, e, xin, m, h, s);
    detail::add_bias_rows(h, m, H, b_gate);
    detail::apply_activation(f.activation, h, m * H);
    for (index_t i = 0; i < m * H; ++i) h[i] *= u[i];
  } else {
    detail::apply_activation(f.activation, h, m * H);
  }
  detail::dropout_rows(h, m, H, dropout);
  if constexpr (std::is_same<T, float>::value)
    if (bf16) detail::round_bf16(h, m * H, s.hb);
  detail::eigen_gemm(f.down, e, h, m, y, s);
  detail::add_bias_rows(y, m, M, b_down);
}

/// y [m, out] = x [m, in] . W[e] for m <= FfnKernel::row_block_of(w.backend())
/// rows, single-threaded, fp32 precision (the router's logits).
template <class T>
void linear_rows(const MatrixBank<T>& w, index_t e, const T* x, index_t m, T* y, FfnScratch<T>& s) {
  if (w.precision() != Precision::fp32) detail::raise<value_error>("linear_rows: fp32 banks only");
  if (m > FfnKernel<T>::row_block_of(w.backend()))
    detail::raise<value_error>("linear_rows: ", m, " rows in one call (at most ", FfnKernel<T>::row_block_of(w.backend()), ")");
  if (m == 0) return;
  [[maybe_unused]] detail::SingleThread one;
  x = detail::aligned_rows(x, m, w.in(), s.xa);
#if defined(EINMOE_HAS_DNNL)
  if constexpr (std::is_same<T, float>::value) {
    if (w.backend() == Backend::dnnl && w.in() > 0 && w.out() > 0) {
      using detail::dnnl_impl::Type;
      detail::dnnl_gemm(w, e, Type::f32, x, m, Type::f32, y, nullptr, -1, nullptr, s);
      return;
    }
  }
#endif
  detail::eigen_gemm(w, e, x, m, y, s);
}

}  // namespace einmoe
