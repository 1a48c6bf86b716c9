#!/usr/bin/env python3
"""Plots routing time per token against the group size, sparse vs dense.

    build/release/benchmarks/einmoe_benchmarks --benchmark_filter=RoutingScaling \
        --benchmark_format=json > routing.json
    /usr/bin/python3 benchmarks/plot.py routing.json docs/scaling.svg

Uses Debian's python3-matplotlib.
"""
import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    data = json.load(open(sys.argv[1]))
    series = {}
    for b in data["benchmarks"]:
        m = re.match(r"BM_RoutingScaling/(sparse|dense)/(\d+)/(\d+)/real_time$", b["name"])
        if not m or b.get("run_type", "iteration") != "iteration":
            continue
        path, s, threads = m.group(1), int(m.group(2)), int(m.group(3))
        ns_per_token = b["real_time"] * {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[b["time_unit"]] / 8192
        series.setdefault((path, threads), []).append((s, ns_per_token))
    if not series:
        print("plot.py: no BM_RoutingScaling results in " + sys.argv[1], file=sys.stderr)
        sys.exit(2)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (path, threads), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                linestyle="-" if path == "sparse" else "--",
                label=f"{path}, {threads} thread{'s' if threads > 1 else ''}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("group size S (tokens competing for capacity)")
    ax.set_ylabel("routing time per token (ns)")
    ax.set_title("Top-2 routing (gating + dispatch + combine), E=16, M=512,\n"
                 "8192 tokens, capacity factor 1.25: sparse plan vs dense one-hot")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[2])
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
