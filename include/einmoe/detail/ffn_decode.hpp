// einmoe/detail/ffn_decode.hpp - the decode path: an expert FFN on a few
// rows (a decode step), streaming each projection's packed panels once
// (detail/gemv.hpp), and the split that cuts one expert's projections by
// panels over the threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "einmoe/core/threads.hpp"
#include "einmoe/detail/ffn_gemm.hpp"
#include "einmoe/detail/gemv.hpp"

namespace einmoe::detail {

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
inline void ffn_decode(const FfnKernel<float>& f, index_t e, const float* x, index_t m, float* y,
                       FfnScratch<float>& s) {
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

}  // namespace einmoe::detail
