// einmoe/detail/dnnl.hpp - the oneDNN side of the kernel layer (built only
// when einmoe is configured with oneDNN: EINMOE_HAS_DNNL).
//
// Matmul primitives are created once per (rows, in, out, types, epilogue) and
// cached for the life of the process; weights of every row count use one
// packed layout, chosen once per (in, out, types), so a bank packs its
// weights once. Every primitive is created and executed as a single-threaded
// kernel (SingleThread), so that its result never depends on the thread
// count; callers parallelize over independent items instead. The scratchpad
// is the caller's (scratchpad_mode::user), so one primitive can run on many
// threads at once.
#pragma once

#if defined(EINMOE_HAS_DNNL)

#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <utility>

#include "einmoe/core/error.hpp"
#include "einmoe/core/threads.hpp"

namespace einmoe::detail::dnnl_impl {

/// The CPU engine (one per process).
inline dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

/// A stream per thread (streams are cheap but not free to create).
inline dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

/// The most rows one call multiplies (the kernel layer splits longer runs of
/// rows into blocks of this many). Every row count up to it uses the same
/// packed weight layout.
inline constexpr index_t kBlockRows = 256;

enum class Type : int { f32, bf16, u8, s8, s32 };

inline dnnl::memory::data_type data_type(Type t) {
  using dt = dnnl::memory::data_type;
  switch (t) {
    case Type::f32: return dt::f32;
    case Type::bf16: return dt::bf16;
    case Type::u8: return dt::u8;
    case Type::s8: return dt::s8;
    default: return dt::s32;
  }
}

/// One matmul: dst [m, n] = epilogue(src [m, k] . weights [k, n]).
struct MatmulKey {
  index_t m = 0, k = 0, n = 0;
  Type src = Type::f32, wei = Type::f32, dst = Type::f32;
  bool bias = false;   ///< + f32 bias [n] (the matmul's bias argument)
  int act = -1;        ///< then an activation (an Activation value), -1 for none
  bool mul = false;    ///< then * a full f32 [m, n] tensor
  bool plain = false;  ///< weights row-major [k, n] instead of the packed layout

  bool operator==(const MatmulKey& o) const {
    return m == o.m && k == o.k && n == o.n && src == o.src && wei == o.wei && dst == o.dst && bias == o.bias &&
           act == o.act && mul == o.mul && plain == o.plain;
  }
};

struct MatmulKeyHash {
  std::size_t operator()(const MatmulKey& k) const {
    std::uint64_t h = 1469598103934665603ull;
    for (std::uint64_t v :
         {static_cast<std::uint64_t>(k.m), static_cast<std::uint64_t>(k.k), static_cast<std::uint64_t>(k.n),
          static_cast<std::uint64_t>(k.src), static_cast<std::uint64_t>(k.wei), static_cast<std::uint64_t>(k.dst),
          static_cast<std::uint64_t>(k.bias), static_cast<std::uint64_t>(k.act + 1), static_cast<std::uint64_t>(k.mul),
          static_cast<std::uint64_t>(k.plain)})
      h = (h ^ v) * 1099511628211ull;
    return static_cast<std::size_t>(h);
  }
};

struct Matmul {
  dnnl::matmul prim;
  dnnl::memory::desc src, wei, dst, bias, mul, scratchpad;
  int mul_arg = 0;          ///< DNNL_ARG_ATTR_MULTIPLE_POST_OP(position) | DNNL_ARG_SRC_1
  std::size_t scratch = 0;  ///< bytes of scratchpad the caller provides
  std::string impl;         ///< oneDNN's name for the kernel, e.g. "brg:avx512_core"
};

inline dnnl::algorithm eltwise_of(int act) {
  switch (act) {
    case 0: return dnnl::algorithm::eltwise_relu;       // Activation::relu
    case 1: return dnnl::algorithm::eltwise_gelu_erf;   // Activation::gelu
    case 2: return dnnl::algorithm::eltwise_gelu_tanh;  // Activation::gelu_tanh
    default: return dnnl::algorithm::eltwise_swish;     // Activation::silu (alpha 1)
  }
}

/// The layout a bank packs weights [k, n] in: what oneDNN chooses for a
/// full block of rows, provided every smaller row count accepts it too (else
/// plain row-major, which every kernel accepts). Cached per (k, n, types).
inline dnnl::memory::desc weights_desc(index_t k, index_t n, Type src, Type wei, Type dst, bool* packed);

/// The cached primitive for `key` (created on first use, single-threaded).
/// The cache keeps at most kMaxPrimitives (then drops the oldest; a caller
/// still holding one keeps it alive).
inline std::shared_ptr<const Matmul> matmul(const MatmulKey& key);

/// Primitives kept at most (about 40 KiB each).
inline constexpr std::size_t kMaxPrimitives = 2048;

namespace impl {

inline dnnl::memory::dims dims2(index_t a, index_t b) {
  return {static_cast<dnnl::memory::dim>(a), static_cast<dnnl::memory::dim>(b)};
}

inline Matmul create(const MatmulKey& key, const dnnl::memory::desc& wei) {
  using tag = dnnl::memory::format_tag;
  Matmul mm;
  mm.src = dnnl::memory::desc(dims2(key.m, key.k), data_type(key.src), tag::ab);
  mm.wei = wei;
  mm.dst = dnnl::memory::desc(dims2(key.m, key.n), data_type(key.dst), tag::ab);
  if (key.bias) mm.bias = dnnl::memory::desc(dims2(1, key.n), dnnl::memory::data_type::f32, tag::ab);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::post_ops po;
  if (key.act >= 0) po.append_eltwise(1.f, eltwise_of(key.act), key.act == 3 ? 1.f : 0.f, 0.f);
  if (key.mul) {
    mm.mul = dnnl::memory::desc(dims2(key.m, key.n), dnnl::memory::data_type::f32, tag::ab);
    mm.mul_arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(po.len()) | DNNL_ARG_SRC_1;
    po.append_binary(dnnl::algorithm::binary_mul, mm.mul);
  }
  attr.set_post_ops(po);
  const dnnl::matmul::desc d =
      key.bias ? dnnl::matmul::desc(mm.src, mm.wei, mm.bias, mm.dst) : dnnl::matmul::desc(mm.src, mm.wei, mm.dst);
  const dnnl::matmul::primitive_desc pd(d, attr, engine());
  mm.prim = dnnl::matmul(pd);
  mm.wei = pd.weights_desc();  // the concrete layout when `wei` was format any
  mm.scratchpad = pd.scratchpad_desc();
  mm.scratch = mm.scratchpad.get_size();
  mm.impl = pd.impl_info_str();
  return mm;
}

struct LayoutKey {
  index_t k, n;
  Type src, wei, dst;
  bool operator==(const LayoutKey& o) const {
    return k == o.k && n == o.n && src == o.src && wei == o.wei && dst == o.dst;
  }
};
struct LayoutKeyHash {
  std::size_t operator()(const LayoutKey& k) const {
    return MatmulKeyHash{}(MatmulKey{0, k.k, k.n, k.src, k.wei, k.dst, false, -1, false, false});
  }
};
struct Layout {
  dnnl::memory::desc desc;
  bool packed = false;
};

/// The process-wide caches, guarded by one reader-writer lock.
struct Cache {
  std::shared_mutex mutex;
  std::unordered_map<MatmulKey, std::shared_ptr<const Matmul>, MatmulKeyHash> matmuls;
  std::deque<MatmulKey> order;  // insertion order, for eviction
  std::unordered_map<LayoutKey, Layout, LayoutKeyHash> layouts;
};
inline Cache& cache() {
  static Cache c;
  return c;
}

[[noreturn]] inline void fail(const dnnl::error& e, const MatmulKey& key) {
  raise<value_error>("oneDNN: cannot run a ", key.m, " x ", key.k, " x ", key.n, " matmul (", e.what(), ")");
}

}  // namespace impl

/// True when oneDNN's int8 matmul is exact on this CPU: with VNNI
/// (AVX512_VNNI or AVX-VNNI) it accumulates u8 x s8 products in int32.
/// Without VNNI it adds pairs of products in int16 with saturation
/// (vpmaddubsw), which full-range int8 weights and activations overflow.
inline bool int8_exact() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto has = [isa](dnnl_cpu_isa_t bits) {
    return (isa & static_cast<unsigned>(bits)) == static_cast<unsigned>(bits);
  };
  return has(dnnl_cpu_isa_avx512_core_vnni) || has(dnnl_cpu_isa_avx2_vnni);
}

inline dnnl::memory::desc weights_desc(index_t k, index_t n, Type src, Type wei, Type dst, bool* packed) {
  auto& c = impl::cache();
  const index_t block_rows = kBlockRows;
  const impl::LayoutKey lk{k, n, src, wei, dst};
  {
    std::shared_lock<std::shared_mutex> read(c.mutex);
    auto it = c.layouts.find(lk);
    if (it != c.layouts.end()) {
      if (packed) *packed = it->second.packed;
      return it->second.desc;
    }
  }
  std::unique_lock<std::shared_mutex> write(c.mutex);
  SingleThread one;
  using tag = dnnl::memory::format_tag;
  const dnnl::memory::desc plain(impl::dims2(k, n), data_type(wei), tag::ab);
  impl::Layout layout{plain, false};
  try {
    MatmulKey key{block_rows, k, n, src, wei, dst, false, -1, false, false};
    const dnnl::memory::desc any(impl::dims2(k, n), data_type(wei), tag::any);
    const dnnl::memory::desc chosen = impl::create(key, any).wei;
    if (chosen != plain) {
      // Every row count 1..block_rows must accept the same layout.
      bool all = true;
      for (index_t m : {index_t{1}, index_t{2}, index_t{3}, block_rows / 2 + 1, block_rows - 1}) {
        if (m < 1 || m > block_rows) continue;
        key.m = m;
        try {
          all = all && impl::create(key, chosen).wei == chosen;
        } catch (const dnnl::error&) {
          all = false;
        }
      }
      if (all) layout = impl::Layout{chosen, true};
    }
  } catch (const dnnl::error& e) {
    raise<value_error>("oneDNN: no matmul for weights ", k, " x ", n, " (", e.what(), ")");
  }
  c.layouts.emplace(lk, layout);
  if (packed) *packed = layout.packed;
  return layout.desc;
}

inline std::shared_ptr<const Matmul> matmul(const MatmulKey& key) {
  auto& c = impl::cache();
  {
    std::shared_lock<std::shared_mutex> read(c.mutex);
    auto it = c.matmuls.find(key);
    if (it != c.matmuls.end()) return it->second;
  }
  dnnl::memory::desc wei;
  if (key.plain) {
    wei = dnnl::memory::desc(impl::dims2(key.k, key.n), data_type(key.wei), dnnl::memory::format_tag::ab);
  } else {
    // the packed layout for these shapes and types (independent of rows and epilogue)
    if (key.m > kBlockRows) raise<value_error>("oneDNN: ", key.m, " rows in one call (at most ", kBlockRows, ")");
    wei = weights_desc(key.k, key.n, key.src, key.wei, key.dst, nullptr);
  }
  std::unique_lock<std::shared_mutex> write(c.mutex);
  auto it = c.matmuls.find(key);
  if (it != c.matmuls.end()) return it->second;
  SingleThread one;
  try {
    auto mm = std::make_shared<const Matmul>(impl::create(key, wei));
    while (c.order.size() >= kMaxPrimitives) {
      c.matmuls.erase(c.order.front());
      c.order.pop_front();
    }
    c.order.push_back(key);
    c.matmuls.emplace(key, mm);
    return mm;
  } catch (const dnnl::error& e) {
    impl::fail(e, key);
  }
}

/// The padded [k, n] of a weights layout that is oneDNN's "BA16a64b"-style
/// packing with an innermost block of g k-values (g = 1, 2, 4): panels of 64
/// columns, each a contiguous run of 256-byte steps of g k-values x 64
/// columns. {0, 0} for any other layout.
inline std::pair<index_t, index_t> panel_layout(const dnnl::memory::desc& d, index_t g, std::size_t element_bytes) {
  const auto& m = d.data;
  if (m.ndims != 2 || m.format_kind != dnnl_blocked || m.offset0 != 0 || m.extra.flags != 0) return {0, 0};
  const auto& b = m.format_desc.blocking;
  const index_t kpad = m.padded_dims[0], npad = m.padded_dims[1];
  const bool blocks = g == 1 ? b.inner_nblks == 2 : b.inner_nblks == 3 && b.inner_blks[2] == g && b.inner_idxs[2] == 0;
  if (!blocks || b.inner_blks[0] != 16 || b.inner_idxs[0] != 0 || b.inner_blks[1] != 64 || b.inner_idxs[1] != 1)
    return {0, 0};
  if (b.strides[0] != 16 * g * 64 || b.strides[1] != kpad * 64 || kpad % (16 * g) != 0 || npad % 64 != 0) return {0, 0};
  if (static_cast<index_t>(element_bytes) * g * 64 != 256) return {0, 0};
  return {kpad, npad};
}

/// Runs `mm` on the caller's buffers: dst = epilogue(src . wei). Through
/// oneDNN's C API with the arguments on the stack, so that einmoe's side of
/// a call allocates nothing (the C++ API's argument map and memory handles
/// would, on every call).
inline void execute(const Matmul& mm, const void* src, const void* wei, void* dst, const float* bias, const float* mul,
                    void* scratch) {
  dnnl_exec_arg_t args[6];
  dnnl_memory_t mems[6];
  int n = 0;
  dnnl_status_t st = dnnl_success;
  auto add = [&](int arg, const dnnl::memory::desc& d, const void* p) {
    if (st != dnnl_success) return;
    st = dnnl_memory_create(&mems[n], &d.data, engine().get(), const_cast<void*>(p));
    if (st == dnnl_success) args[n] = {arg, mems[n]}, ++n;
  };
  add(DNNL_ARG_SRC, mm.src, src);
  add(DNNL_ARG_WEIGHTS, mm.wei, wei);
  add(DNNL_ARG_DST, mm.dst, dst);
  if (bias) add(DNNL_ARG_BIAS, mm.bias, bias);
  if (mul) add(mm.mul_arg, mm.mul, mul);
  if (mm.scratch) add(DNNL_ARG_SCRATCHPAD, mm.scratchpad, scratch);
  if (st == dnnl_success) {
    SingleThread one;
    st = dnnl_primitive_execute(mm.prim.get(), stream().get(), n, args);
  }
  for (int i = 0; i < n; ++i) dnnl_memory_destroy(mems[i]);
  if (st != dnnl_success)
    raise<value_error>("oneDNN: matmul (", mm.impl, ") failed with status ", static_cast<int>(st));
}

/// Copies a plain row-major [k, n] matrix of type t into `desc`'s layout at `out`.
inline void reorder_into(const void* plain, Type t, index_t k, index_t n, const dnnl::memory::desc& desc,
                         void* out) try {
  auto& eng = engine();
  const dnnl::memory::desc src_desc(impl::dims2(k, n), data_type(t), dnnl::memory::format_tag::ab);
  dnnl::memory src(src_desc, eng, const_cast<void*>(plain));
  dnnl::memory dst(desc, eng, out);
  SingleThread one;
  dnnl::reorder(src, dst).execute(stream(), src, dst);
  stream().wait();
} catch (const dnnl::error& e) {
  raise<value_error>("oneDNN: cannot lay out a ", k, " x ", n, " weight matrix (", e.what(), ")");
}

}  // namespace einmoe::detail::dnnl_impl

#endif  // EINMOE_HAS_DNNL
