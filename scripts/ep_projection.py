#!/usr/bin/env python3
"""Projection of expert-parallel layer time on clusters (docs/expert-parallel.md).

Dev-time only, standard library only: prints the markdown tables of
docs/expert-parallel.md and writes docs/expert-parallel-projection.svg.

    python3 scripts/ep_projection.py

Model (weak scaling: every rank brings N tokens, experts balanced):
  compute  = FLOP per token * N / R             R: one rank's expert FLOP rate
  exchange = 2 * (k N M s (P-1)/P / B + alpha (P-1))     flat all-to-all, there and back
  2DH      = 2 * (k N M s (P-1)/P / B + alpha (P/n - 1 + n - 1) + k N M s / B_node)
             (Tutel's two-level exchange: n ranks per node first swap inside the node
             at B_node, then send one aggregated message per node pair)
The exchange is not overlapped with compute (einmoe does not overlap yet).
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))

CORE_FP32 = 192e9          # measured: the fp32 layer's useful FLOP/s on one Zen 5 core (0.88 of peak)
CORES = 32                 # one rank = one 32-core socket (assumed linear within the socket)
ALPHA = 2e-6               # per-message latency across the network (assumed; loopback measured 0.5 us)
B_NODE = 9e9               # intra-node exchange bandwidth (measured loopback MPI_Alltoallv, 2 ranks)
N = 4096                   # tokens per rank per layer
RANKS_PER_NODE = 8

LAYERS = {
    # name: (M, H, k, FLOP per token, bytes per activation value, rate multiplier for the expert precision)
    "reference (M 512, H 2048, top-2, fp32)": (512, 2048, 2, 4 * 2 * 512 * 2048, 4, 1.0),
    "DeepSeek-V3-sized (M 7168, H 2048, top-8, SwiGLU, bf16)": (7168, 2048, 8, 6 * 8 * 7168 * 2048, 2, 2.0),
}
GBITS = [25, 100, 200, 400]
RANKS = [8, 32, 128, 1024]


def times(layer, P, gbit, hier=False):
    M, H, k, flop, s, mult = layer
    rate = CORE_FP32 * CORES * mult
    compute = flop * N / rate
    B = gbit * 1e9 / 8
    data = k * N * M * s * (P - 1) / P
    if hier:
        n = RANKS_PER_NODE
        x = 2 * (data / B + ALPHA * (P / n - 1 + n - 1) + k * N * M * s / B_NODE)
    else:
        x = 2 * (data / B + ALPHA * (P - 1))
    return compute, x


def tables():
    out = []
    for name, layer in LAYERS.items():
        out.append(f"\n**{name}**, {N} tokens per rank: layer time in ms (exchange share)\n")
        out.append("| ranks | " + " | ".join(f"{g} Gb/s" for g in GBITS) + " | 2DH at 100 Gb/s |")
        out.append("|---|" + "---|" * (len(GBITS) + 1))
        for P in RANKS:
            cells = []
            for g in GBITS:
                c, x = times(layer, P, g)
                cells.append(f"{(c + x) * 1e3:.1f} ({100 * x / (c + x):.0f}%)")
            c, x = times(layer, P, 100, hier=True)
            cells.append(f"{(c + x) * 1e3:.1f} ({100 * x / (c + x):.0f}%)")
            out.append(f"| {P} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def svg():
    W, Hh, L, B, T = 640, 360, 60, 40, 30
    layer = LAYERS["DeepSeek-V3-sized (M 7168, H 2048, top-8, SwiGLU, bf16)"]
    Ps = [2 ** i for i in range(1, 11)]
    colors = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4"]
    x_of = lambda P: L + (W - L - 20) * (Ps.index(P)) / (len(Ps) - 1)
    y_of = lambda f: T + (Hh - T - B) * (1 - f)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{Hh}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{Hh}" fill="white"/>',
             f'<text x="{W / 2}" y="18" text-anchor="middle">DeepSeek-V3-sized MoE layer, {N} tokens/rank: share of time in the exchange</text>']
    for f in (0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(f)
        parts.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - 20}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{int(f * 100)}%</text>')
    for P in Ps:
        parts.append(f'<text x="{x_of(P):.1f}" y="{Hh - B + 16}" text-anchor="middle">{P}</text>')
    parts.append(f'<text x="{(W + L) / 2}" y="{Hh - 6}" text-anchor="middle">ranks (32-core sockets)</text>')
    for g, col in zip(GBITS, colors):
        pts = []
        for P in Ps:
            c, x = times(layer, P, g)
            pts.append(f"{x_of(P):.1f},{y_of(x / (c + x)):.1f}")
        parts.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{" ".join(pts)}"/>')
        c, x = times(layer, Ps[-1], g)
        parts.append(f'<text x="{W - 22}" y="{y_of(x / (c + x)) - 4:.1f}" text-anchor="end" fill="{col}">{g} Gb/s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


if __name__ == "__main__":
    print(tables())
    with open(os.path.join(HERE, "..", "docs", "expert-parallel-projection.svg"), "w") as f:
        f.write(svg() + "\n")
