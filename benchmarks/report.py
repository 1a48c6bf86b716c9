#!/usr/bin/python3
"""Regenerates docs/performance.md's results from one benchmark run.

    /usr/bin/python3 benchmarks/report.py [--build build/release] [--update-docs]

Runs einmoe_benchmarks on the headline cases (JSON, medians of repetitions in
random interleaving, since this kind of machine is shared and noisy), measures
the peak memory of the sparse and dense layer on the reference configuration
(`einmoe moe`, one process each), runs benchmarks/compare_ort.py (when node
and onnxruntime-node are there) and benchmarks/compare_pytorch.py (when
PyTorch is), and prints markdown: the tables, the suite's target ratios and
the comparisons. With --update-docs it replaces the text between
<!-- results:begin --> and <!-- results:end --> in docs/performance.md.
"""
import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FILTER = ("BM_PeakFMA|BM_StreamRead|BM_MoELayer/|BM_MoEBackward/|BM_MoELayerPortable/|BM_ExpertStage/|BM_PrecisionError|"
          "BM_MoEDecode/|BM_MoELayerDense/|BM_EinsumGemm|BM_EigenGemm|BM_RoutingScaling/(sparse|dense)/(256|8192)/")
PRECISIONS = ("fp32", "bf16", "int8")


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cache_value(build, key):
    try:
        for line in open(os.path.join(build, "CMakeCache.txt")):
            if line.startswith(key + ":"):
                return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return ""


def peak_rss_mb(cmd):
    """Peak RSS of a child process, measured in a fresh Python child so that
    earlier children do not count."""
    code = ("import resource,subprocess,sys;"
            "r=subprocess.run(sys.argv[1:],capture_output=True);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode==0 else -1)")
    out = subprocess.run([sys.executable, "-c", code] + cmd, capture_output=True, text=True)
    kb = int(out.stdout.strip() or -1)
    return kb / 1024 if kb > 0 else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per repetition of each benchmark")
    ap.add_argument("--update-docs", action="store_true")
    a = ap.parse_args()
    bench = os.path.join(a.build, "benchmarks", "einmoe_benchmarks")
    cli = os.path.join(a.build, "tools", "einmoe")
    for p in (bench, cli):
        if not os.path.exists(p):
            sys.exit(f"report.py: {p} is missing; build with: cmake --preset release && cmake --build --preset release")
    run = subprocess.run([bench, f"--benchmark_filter={FILTER}", "--benchmark_format=json",
                          f"--benchmark_repetitions={a.repetitions}", "--benchmark_enable_random_interleaving=true",
                          f"--benchmark_min_time={a.min_time}"],
                         capture_output=True, text=True, check=True)
    res = {}
    for b in json.loads(run.stdout)["benchmarks"]:
        name = b["run_name"].replace("/real_time", "")
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                res[name] = b
        elif name not in res or res[name].get("run_type") != "aggregate":
            res[name] = b  # a single run (no repetitions)
    ratios = run.stderr.strip()
    ratios = ratios[ratios.find("Targets"):] if "Targets" in ratios else ratios

    def ms(name):
        b = res.get(name)
        if not b:
            return float("nan")
        return b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1, "s": 1e3}[b["time_unit"]]

    def counter(name, key):
        b = res.get(name)
        return float(b[key]) if b and key in b else float("nan")

    threads = sorted({int(n.rsplit("/", 1)[1]) for n in res if n.startswith("BM_PeakFMA/")})
    out = []
    compiler = cache_value(a.build, "CMAKE_CXX_COMPILER")
    version = subprocess.run([compiler or "c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    flags = "-O3 -DNDEBUG" + (" -march=native" if cache_value(a.build, "EINMOE_NATIVE") == "ON" else "")
    backend = "oneDNN " + dnnl_version() if cache_value(a.build, "EINMOE_DNNL") != "OFF" else "Eigen"
    out += [f"CPU: {cpu_name()} ({os.cpu_count()} cores). Compiler: {version}, `{flags}`, expert kernels on {backend}, "
            "Eigen 3.4, OpenMP. Medians of " + str(a.repetitions) + " repetitions, randomly interleaved.",
            "Reference layer: 4 groups x 1024 tokens, model 512, hidden 2048, 16 experts, top-2, capacity 160, relu; "
            "routing in float32, expert weights in the precision shown.", ""]
    out += ["| threads | peak FMA | stream read | precision | layer | useful GFLOP/s | of peak | speed-up vs fp32 "
            "| no-`-march` build / preset | decode 1 token | decode 8 tokens | 8 tokens / bandwidth bound | max rel. error vs fp32 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in threads:
        peak = counter(f"BM_PeakFMA/{t}", "GFLOP/s")
        bw = counter(f"BM_StreamRead/{t}", "GB/s")
        for p, prec in enumerate(PRECISIONS):
            layer = ms(f"BM_MoELayer/{p}/{t}")
            gflops = counter(f"BM_MoELayer/{p}/{t}", "GFLOP/s")
            d1, d8 = ms(f"BM_MoEDecode/{p}/1/{t}"), ms(f"BM_MoEDecode/{p}/8/{t}")
            bound = counter(f"BM_MoEDecode/{p}/8/{t}", "weight_bytes") / (bw * 1e9) * 1e3
            err = counter(f"BM_PrecisionError/{p}/iterations:1", "rel_error") if p else 0.0
            portable = ms(f"BM_MoELayerPortable/{p}/{t}") / layer
            head = f"| {t} | {peak:.0f} GFLOP/s | {bw:.1f} GB/s" if p == 0 else "| | |"
            out.append(f"{head} | {prec} | {layer:.1f} ms | {gflops:.0f} | {gflops / peak:.2f} | "
                       f"{ms(f'BM_MoELayer/0/{t}') / layer:.2f}x | {portable:.2f} | {d1 * 1e3:.0f} µs | {d8 * 1e3:.0f} µs | "
                       f"{d8 / bound:.2f} | {err:.1e} |")
    out += ["", "| threads | dense oracle layer | einsum / Eigen GEMM | routing per token S=8192 / S=256 (sparse) | same, dense |",
            "|---|---|---|---|---|"]
    for t in threads:
        r256, r8k = ms(f"BM_RoutingScaling/sparse/256/{t}"), ms(f"BM_RoutingScaling/sparse/8192/{t}")
        d256, d8k = ms(f"BM_RoutingScaling/dense/256/{t}"), ms(f"BM_RoutingScaling/dense/8192/{t}")
        out.append(f"| {t} | {ms(f'BM_MoELayerDense/{t}'):.0f} ms | {ms(f'BM_EigenGemm/{t}') / ms(f'BM_EinsumGemm/{t}'):.2f} | "
                   f"{r8k / r256:.2f} | {d8k / d256:.1f} |")

    out += ["", "| threads | training step fp32 (forward + backward) | / forward | useful GFLOP/s | of peak | bf16 step "
                "| recompute_hidden step | tape per token (kept / recompute) |", "|---|---|---|---|---|---|---|---|"]
    for t in threads:
        step, fwd = ms(f"BM_MoEBackward/0/{t}/0"), ms(f"BM_MoELayer/0/{t}")
        g = counter(f"BM_MoEBackward/0/{t}/0", "GFLOP/s")
        kept = counter(f"BM_MoEBackward/0/{t}/0", "tape_bytes_per_token")
        rec = counter(f"BM_MoEBackward/0/{t}/1", "tape_bytes_per_token")
        out.append(f"| {t} | {step:.1f} ms | {step / fwd:.2f} | {g:.0f} | {g / counter(f'BM_PeakFMA/{t}', 'GFLOP/s'):.2f} | "
                   f"{ms(f'BM_MoEBackward/1/{t}/0'):.1f} ms | {ms(f'BM_MoEBackward/0/{t}/1'):.1f} ms | "
                   f"{kept / 1024:.1f} / {rec / 1024:.1f} KiB |")

    # peak memory of one layer forward, reference configuration
    mem = {}
    with tempfile.TemporaryDirectory() as d:
        gen = ("import numpy as np,sys;d=sys.argv[1];r=np.random.default_rng(2024);"
               "np.save(d+'/x.npy',r.normal(size=(4,1024,512)).astype(np.float32));"
               "np.save(d+'/wg.npy',(r.normal(size=(512,16))/22.6).astype(np.float32));"
               "np.save(d+'/wi.npy',(r.normal(size=(16,512,2048))/22.6).astype(np.float32));"
               "np.save(d+'/wo.npy',(r.normal(size=(16,2048,512))/45.3).astype(np.float32))")
        subprocess.run([sys.executable, "-c", gen, d], check=True)
        base = [cli, "moe", "--inputs", f"{d}/x.npy", "--wg", f"{d}/wg.npy", "--wi", f"{d}/wi.npy",
                "--wo", f"{d}/wo.npy", "--capacity", "160", "--threads", "1", "--out", f"{d}/o"]
        for prec in PRECISIONS:
            mem[prec] = peak_rss_mb(base + ["--precision", prec])
        mem["dense"] = peak_rss_mb(base + ["--dense"])
    out += ["", "Peak memory of one forward pass (process RSS, weights loaded from fp32 .npy included): "
                + ", ".join(f"{k} {v:.0f} MB" for k, v in mem.items()) + ".", "",
            "The suite's targets, as it printed them:", "", "```", ratios, "```", ""]

    for script, extra in (("compare_ort.py", ["--threads"] + [str(t) for t in threads]),
                          ("compare_pytorch.py", None), ("compare_pytorch.py", "--backward")):
        runs = ([extra] if isinstance(extra, list) else
                [["--threads", str(t)] + ([extra] if extra else []) for t in threads])
        for args in runs:
            cmp = subprocess.run([sys.executable, os.path.join(HERE, script), "--einmoe", cli] + args,
                                 capture_output=True, text=True)
            out.append("```\n" + (cmp.stdout + cmp.stderr).strip() + "\n```")
    out += ["", "Reproduce: `cmake --preset release && cmake --build --preset release && "
                "/usr/bin/python3 benchmarks/report.py --update-docs`"]
    text = "\n".join(out)
    print(text)
    if a.update_docs:
        path = os.path.join(ROOT, "docs", "performance.md")
        readme = open(path).read()
        new = re.sub(r"(<!-- results:begin -->\n).*?(<!-- results:end -->)", lambda m: m.group(1) + text + "\n" + m.group(2),
                     readme, flags=re.S)
        if new == readme and "<!-- results:begin -->" not in readme:
            sys.exit("report.py: docs/performance.md has no <!-- results:begin --> marker")
        open(path, "w").write(new)
        print("updated docs/performance.md", file=sys.stderr)


def dnnl_version():
    try:
        for line in open("/usr/include/oneapi/dnnl/dnnl_version.h"):
            m = re.match(r"#define DNNL_VERSION_(MAJOR|MINOR|PATCH) (\d+)", line)
            if m:
                dnnl_version.parts.append(m.group(2))
    except OSError:
        return ""
    return ".".join(dnnl_version.parts[:3])


dnnl_version.parts = []


if __name__ == "__main__":
    main()
