// einmoe/kernels/matrix_bank.hpp - weight matrices laid out once for the
// expert kernels.
//
// Example:
//   // wi: [experts=4, model=64, hidden=128], any dim order; float, double or bfloat16
//   MatrixBank<float> up(wi, "experts", "model", "hidden", Precision::bf16, Backend::automatic, "wi");
//   index_t n = up.count();          // 4 matrices, each [in=64, out=128]
//   std::size_t bytes = up.bytes();  // 64 KiB: bf16
//   // wg: [model=64, experts=4], one matrix
//   MatrixBank<float> router(wg, "", "model", "experts", Precision::fp32, Backend::automatic, "wg");
//
// A bank holds `count` matrices [in, out] in one precision and one backend's
// layout: oneDNN's blocked layout for its JIT kernels (whatever that CPU
// prefers), or row-major [in, out] for Eigen. Building it reads the source
// once, in the source's own dim order (a Hugging Face Linear weight
// [out, in] needs no transpose first), rounds to bf16 or quantizes to int8
// (see kernels/quantize.hpp) on the way, and rejects a non-finite weight
// with a value_error naming the tensor and the element. After that the
// bank is immutable, shared by every call and every thread.
//
// T is the layer's float type: float (any precision, either backend) or
// double (fp32 precision, i.e. full double, on Eigen).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "einmoe/core/bfloat16.hpp"
#include "einmoe/core/checked.hpp"
#include "einmoe/core/tensor.hpp"
#include "einmoe/core/threads.hpp"
#include "einmoe/detail/dnnl.hpp"
#include "einmoe/detail/gemv.hpp"
#include "einmoe/kernels/precision.hpp"
#include "einmoe/kernels/quantize.hpp"

namespace einmoe {

/// Whether an explicit backend `b` runs expert weights of precision `p` on
/// this CPU (Backend::automatic always does: it falls back to Eigen). Eigen
/// runs every precision. oneDNN runs fp32 everywhere, bf16 where it has a
/// bf16 matmul (AVX-512 CPUs), and int8 where its int8 products are exact
/// (VNNI; see detail::dnnl_impl::int8_exact). False for dnnl in a build
/// without oneDNN.
/// Never throws.
inline bool backend_supports(Backend b, Precision p) {
  if (b == Backend::automatic || b == Backend::eigen) return true;
#if defined(EINMOE_HAS_DNNL)
  using detail::dnnl_impl::Type;
  if (p == Precision::fp32) return true;
  if (p == Precision::int8) {
    static const bool exact = detail::dnnl_impl::int8_exact();
    return exact;
  }
  static const bool bf16 = [] {
    try {
      detail::dnnl_impl::weights_desc(64, 64, Type::bf16, Type::bf16, Type::f32, nullptr);
      return true;
    } catch (const value_error&) {
      return false;
    }
  }();
  return bf16;
#else
  (void)p;
  return false;
#endif
}

namespace detail {

template <class S>
float source_float(S v) {
  return static_cast<float>(v);
}

/// bfloat16 bits of a weight, rounded once from its own type.
inline std::uint16_t to_bf16_bits(float v) { return bfloat16(v).bits; }
inline std::uint16_t to_bf16_bits(double v) { return bfloat16(v).bits; }
inline std::uint16_t to_bf16_bits(bfloat16 v) { return v.bits; }

[[noreturn]] inline void bank_shape_error(const Shape& s, const std::string& count_dim, const std::string& in_dim,
                                          const std::string& out_dim, const std::string& op) {
  raise<shape_error>(op, ": shape ", s, " is not the dims {", count_dim.empty() ? "" : count_dim + ", ", in_dim, ", ",
                     out_dim, "} in some order");
}

/// One source matrix, read through strides.
template <class S>
struct MatrixSource {
  const S* base;
  index_t sk, sn;  // strides of in and out
  S at(index_t k, index_t n) const { return base[k * sk + n * sn]; }
};

}  // namespace detail

template <class T>
class MatrixBank {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "MatrixBank<float or double>");

 public:
  MatrixBank() = default;

  /// Lays out w's matrices: w has dims {count_dim (omit with ""), in_dim,
  /// out_dim} in any order. `name` appears in error messages.
  /// Throws shape_error unless w has exactly those dims, value_error for a
  /// non-finite element or a backend that cannot run the precision here,
  /// resource_error if the laid-out weights would not fit in memory.
  template <class S>
  MatrixBank(const TensorView<const S>& w, const std::string& count_dim, const std::string& in_dim,
             const std::string& out_dim, Precision precision, Backend backend, const std::string& name);

  index_t count() const { return count_; }
  index_t in() const { return in_; }
  index_t out() const { return out_; }
  Precision precision() const { return precision_; }
  /// dnnl or eigen (never automatic).
  /// Never throws.
  Backend backend() const { return backend_; }
  /// True when the weights are in oneDNN's blocked layout (else row-major).
  /// Never throws.
  bool packed() const { return packed_; }
  bool empty() const { return count_ == 0; }
  /// Bytes of weights, scales and compensation held.
  /// Never throws.
  std::size_t bytes() const { return static_cast<std::size_t>(count_) * (matrix_bytes_ + side_bytes()); }
  /// Bytes of one matrix's weights.
  /// Never throws.
  std::size_t matrix_bytes() const { return matrix_bytes_; }

  // ---- for the kernels --------------------------------------------------------
  /// Matrix e's weights in the bank's layout and element type (T, bf16 bits,
  /// or int8).
  /// Never throws.
  const void* data(index_t e) const {
    return static_cast<const char*>(weights_.get()) + e * static_cast<index_t>(matrix_bytes_);
  }
  /// int8: matrix e's per-output-channel scales [out].
  /// Never throws.
  const float* scales(index_t e) const { return scales_.data() + e * out_; }
  /// int8 on oneDNN: 128 * column sums of matrix e [out] (the u8 activations
  /// are the int8 ones + 128).
  /// Never throws.
  const std::int32_t* compensation(index_t e) const { return comp_.empty() ? nullptr : comp_.data() + e * out_; }
  /// The packed layout's padded [in, out] when the decode kernels
  /// (detail/gemv.hpp) can read it on this CPU, else {0, 0}.
  /// Never throws.
  index_t panel_in() const { return panel_in_; }
  index_t panel_out() const { return panel_out_; }

 private:
  std::size_t side_bytes() const {
    return static_cast<std::size_t>(out_) * (scales_.empty() ? 0 : sizeof(float)) +
           static_cast<std::size_t>(out_) * (comp_.empty() ? 0 : sizeof(std::int32_t));
  }
  std::size_t element_bytes() const {
    return precision_ == Precision::fp32 ? sizeof(T) : precision_ == Precision::bf16 ? 2 : 1;
  }

  /// Where the matrices go (oneDNN's packed layout, or plain [in, out]) and
  /// how many bytes of each matrix are used.
  struct Layout {
#if defined(EINMOE_HAS_DNNL)
    dnnl::memory::desc packed;
    detail::dnnl_impl::Type type = detail::dnnl_impl::Type::f32;
#endif
    index_t plain_elems = 0;
    std::size_t used_bytes = 0;
  };
  void choose_backend(Backend requested, const std::string& op);
  Layout choose_layout(Backend requested, const std::string& op);
  template <class S>
  void lay_out(index_t e, const detail::MatrixSource<S>& m, const Layout& l, const std::string& op,
               const std::string& count_dim, const std::string& in_dim, const std::string& out_dim);

  index_t count_ = 0, in_ = 0, out_ = 0, panel_in_ = 0, panel_out_ = 0;
  Precision precision_ = Precision::fp32;
  Backend backend_ = Backend::eigen;
  bool packed_ = false;
  std::size_t matrix_bytes_ = 0;
  std::shared_ptr<void> weights_;
  std::vector<float> scales_;
  std::vector<std::int32_t> comp_;
};

template <class T>
template <class S>
MatrixBank<T>::MatrixBank(const TensorView<const S>& w, const std::string& count_dim, const std::string& in_dim,
                          const std::string& out_dim, Precision precision, Backend backend, const std::string& name)
    : precision_(precision), backend_(resolve_backend(backend)) {
  static_assert(std::is_floating_point<S>::value || std::is_same<S, bfloat16>::value,
                "MatrixBank: weights of float, double or bfloat16");
  const std::string op = "weights \"" + name + "\"";
  const Shape& s = w.shape();
  const index_t want_rank = count_dim.empty() ? 2 : 3;
  if (s.rank() != want_rank || !s.has(in_dim) || !s.has(out_dim) || (!count_dim.empty() && !s.has(count_dim)))
    detail::bank_shape_error(s, count_dim, in_dim, out_dim, op);
  count_ = count_dim.empty() ? 1 : s.size_of(count_dim);
  in_ = s.size_of(in_dim);
  out_ = s.size_of(out_dim);
  const auto strides = s.strides();
  const index_t se = count_dim.empty() ? 0 : strides[detail::uz(s.index_of(count_dim))];
  const index_t sk = strides[detail::uz(s.index_of(in_dim))], sn = strides[detail::uz(s.index_of(out_dim))];
  choose_backend(backend, op);
  const Layout l = choose_layout(backend, op);
  weights_ = detail::allocate_weights(detail::bytes_for(count_, matrix_bytes_, op));
  if (precision_ == Precision::int8) {
    scales_.assign(detail::uz(detail::mul_size(count_, out_, op)), 0.f);
    if (backend_ == Backend::dnnl) comp_.assign(scales_.size(), 0);
  }
  const S* src = w.data();
  detail::parallel_items(count_, [&](index_t e) {
    lay_out(e, detail::MatrixSource<S>{src + e * se, sk, sn}, l, op, count_dim, in_dim, out_dim);
  });
}

/// The backend that runs this precision here: double runs on Eigen (oneDNN
/// has no double matmul); int8 on a CPU whose oneDNN int8 products
/// saturate runs on Eigen when `requested` is automatic, else is an error.
template <class T>
void MatrixBank<T>::choose_backend(Backend requested, const std::string& op) {
  if (std::is_same<T, double>::value && (precision_ != Precision::fp32 || backend_ == Backend::dnnl)) {
    if (precision_ != Precision::fp32)
      detail::raise<value_error>(op, ": double layers compute in double (precision fp32); ", to_string(precision_),
                                 " is for float layers");
    backend_ = Backend::eigen;  // oneDNN has no double matmul
  }
#if defined(EINMOE_HAS_DNNL)
  if (backend_ == Backend::dnnl && precision_ == Precision::int8 && !detail::dnnl_impl::int8_exact()) {
    if (requested != Backend::automatic)
      detail::raise<value_error>(op,
                                 ": oneDNN's int8 products saturate on a CPU without VNNI; use backend eigen "
                                 "(or automatic) for int8 here");
    backend_ = Backend::eigen;
  }
#else
  (void)requested;
#endif
}

/// oneDNN's packed layout for its kernels (and the decode kernels' panels
/// where they read it), or plain [in, out]; sets matrix_bytes_, each
/// matrix 64-byte aligned.
template <class T>
typename MatrixBank<T>::Layout MatrixBank<T>::choose_layout(Backend requested, const std::string& op) {
  Layout l;
#if defined(EINMOE_HAS_DNNL)
  using detail::dnnl_impl::Type;
  l.type = precision_ == Precision::fp32 ? Type::f32 : precision_ == Precision::bf16 ? Type::bf16 : Type::s8;
  const Type st = precision_ == Precision::fp32 ? Type::f32 : precision_ == Precision::bf16 ? Type::bf16 : Type::u8;
  const Type dt = precision_ == Precision::int8 ? Type::s32 : Type::f32;
  if (backend_ == Backend::dnnl && in_ > 0 && out_ > 0) {
    try {
      l.packed = detail::dnnl_impl::weights_desc(in_, out_, st, l.type, dt, &packed_);
      matrix_bytes_ = l.packed.get_size();
      const auto kind = precision_ == Precision::fp32   ? detail::gemv::Kind::f32
                        : precision_ == Precision::bf16 ? detail::gemv::Kind::bf16
                                                        : detail::gemv::Kind::u8;
      if (packed_ && detail::gemv::supported(kind)) {
        const auto pl = detail::dnnl_impl::panel_layout(l.packed, detail::gemv::group(kind), element_bytes());
        panel_in_ = pl.first, panel_out_ = pl.second;
      }
    } catch (const value_error& e) {
      // oneDNN has no kernel for this precision on this CPU (bf16 before
      // AVX-512): automatic falls back to Eigen, an explicit dnnl is an error.
      if (requested != Backend::automatic)
        detail::raise<value_error>(op, ": ", e.what(), "; use backend eigen (or automatic)");
      backend_ = Backend::eigen;
    }
  }
#else
  (void)requested;
#endif
  l.plain_elems = detail::mul_size(in_, out_, op);
  if (backend_ == Backend::eigen || matrix_bytes_ == 0)
    matrix_bytes_ = detail::bytes_for(l.plain_elems, element_bytes(), op);
  l.used_bytes = matrix_bytes_;
  matrix_bytes_ = (matrix_bytes_ + 63) / 64 * 64;  // every matrix 64-byte aligned
  return l;
}

/// Matrix e: checked finite, to a plain [in, out] of the target type
/// (rounded to bf16 or quantized to int8), then into place.
template <class T>
template <class S>
void MatrixBank<T>::lay_out(index_t e, const detail::MatrixSource<S>& m, const Layout& l, const std::string& op,
                            const std::string& count_dim, const std::string& in_dim, const std::string& out_dim) {
  std::vector<unsigned char> plain(static_cast<std::size_t>(l.plain_elems) * element_bytes());
  for (index_t k = 0; k < in_; ++k)
    for (index_t n = 0; n < out_; ++n)
      if (!std::isfinite(detail::source_float(m.at(k, n))))
        detail::raise<value_error>(op, ": element [", count_dim.empty() ? "" : std::to_string(e) + ", ", k, ", ", n,
                                   "] (", in_dim, ", ", out_dim, ") is ", detail::source_float(m.at(k, n)));
  if (precision_ == Precision::fp32) {
    T* p = reinterpret_cast<T*>(plain.data());
    for (index_t k = 0; k < in_; ++k)
      for (index_t n = 0; n < out_; ++n) p[k * out_ + n] = static_cast<T>(m.at(k, n));
  } else if (precision_ == Precision::bf16) {
    std::uint16_t* p = reinterpret_cast<std::uint16_t*>(plain.data());
    for (index_t k = 0; k < in_; ++k)
      for (index_t n = 0; n < out_; ++n) p[k * out_ + n] = detail::to_bf16_bits(m.at(k, n));
  } else {
    std::int8_t* p = reinterpret_cast<std::int8_t*>(plain.data());
    detail::quantize_columns(m.base, in_, m.sk, out_, m.sn, p, out_, 1, scales_.data() + e * out_);
    if (!comp_.empty()) {
      std::int32_t* comp = comp_.data() + e * out_;
      std::fill(comp, comp + out_, 0);
      for (index_t k = 0; k < in_; ++k)
        for (index_t n = 0; n < out_; ++n) comp[n] += p[k * out_ + n];
      for (index_t n = 0; n < out_; ++n) comp[n] *= 128;
    }
  }
  void* dst = static_cast<char*>(weights_.get()) + e * static_cast<index_t>(matrix_bytes_);
  std::memset(static_cast<char*>(dst) + l.used_bytes, 0, matrix_bytes_ - l.used_bytes);  // the alignment tail
#if defined(EINMOE_HAS_DNNL)
  if (backend_ == Backend::dnnl && l.plain_elems > 0) {
    detail::dnnl_impl::reorder_into(plain.data(), l.type, in_, out_, l.packed, dst);
    return;
  }
#endif
  if (!plain.empty()) std::memcpy(dst, plain.data(), plain.size());
}

}  // namespace einmoe
