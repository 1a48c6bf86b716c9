#!/usr/bin/env python3
"""Regenerates the README's results table from one benchmark run.

    /usr/bin/python3 benchmarks/report.py [--build build/release] [--update-readme]

Runs einmoe_benchmarks (the headline cases, JSON), measures the peak memory of
the sparse and dense layer on the reference configuration (`einmoe moe`, one
process each), runs benchmarks/compare_pytorch.py when PyTorch is present, and
prints a markdown table. With --update-readme it replaces the text between
<!-- results:begin --> and <!-- results:end --> in README.md.
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
FILTER = ("BM_EinsumGemm|BM_EigenGemm|BM_MoELayer/|BM_ExpertGemmFloor|"
          "BM_RoutingScaling/(sparse|dense)/(256|8192)/")


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
    ap.add_argument("--update-readme", action="store_true")
    a = ap.parse_args()
    bench = os.path.join(a.build, "benchmarks", "einmoe_benchmarks")
    cli = os.path.join(a.build, "examples", "einmoe")
    for p in (bench, cli):
        if not os.path.exists(p):
            sys.exit(f"report.py: {p} is missing; build with: cmake --preset release && cmake --build --preset release")
    run = subprocess.run([bench, f"--benchmark_filter={FILTER}", "--benchmark_format=json",
                          "--benchmark_min_time=1"], capture_output=True, text=True, check=True)
    res = {b["name"].replace("/real_time", ""): b for b in json.loads(run.stdout)["benchmarks"]}
    ratios = run.stderr.strip().splitlines()

    def ms(name):
        b = res.get(name)
        if not b:
            return float("nan")
        return b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1, "s": 1e3}[b["time_unit"]]

    threads = sorted({int(n.rsplit("/", 1)[1]) for n in res if n.startswith("BM_MoELayer/sparse/")})
    rows = []
    for t in threads:
        sp, de, fl = ms(f"BM_MoELayer/sparse/{t}"), ms(f"BM_MoELayer/dense/{t}"), ms(f"BM_ExpertGemmFloor/{t}")
        ein, eig = ms(f"BM_EinsumGemm/{t}"), ms(f"BM_EigenGemm/{t}")
        r256, r8k = ms(f"BM_RoutingScaling/sparse/256/{t}"), ms(f"BM_RoutingScaling/sparse/8192/{t}")
        d256, d8k = ms(f"BM_RoutingScaling/dense/256/{t}"), ms(f"BM_RoutingScaling/dense/8192/{t}")
        rows.append((t, sp, de, fl, sp / fl, eig / ein, r8k / r256, d8k / d256))

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
        mem["sparse"] = peak_rss_mb(base)
        mem["dense"] = peak_rss_mb(base + ["--dense"])

    torch_lines = []
    for t in threads:
        cmp = subprocess.run([sys.executable, os.path.join(HERE, "compare_pytorch.py"), "--einmoe", cli,
                              "--threads", str(t)], capture_output=True, text=True)
        torch_lines.append((cmp.stdout + cmp.stderr).strip())

    compiler = cache_value(a.build, "CMAKE_CXX_COMPILER")
    version = subprocess.run([compiler or "c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    flags = "-O3 -DNDEBUG" + (" -march=native" if cache_value(a.build, "EINMOE_NATIVE") == "ON" else "")
    out = [f"CPU: {cpu_name()} ({os.cpu_count()} cores). Compiler: {version}, `{flags}`, Eigen 3.4, OpenMP.",
           "Reference layer: 4 groups x 1024 tokens, model 512, hidden 2048, 16 experts, top-2, capacity 160, "
           "relu, float32.", "",
           "| threads | sparse layer | dense layer | expert-GEMM floor | sparse / floor | einsum / Eigen GEMM | "
           "routing per token S=8192 / S=256 (sparse) | same, dense |",
           "|---|---|---|---|---|---|---|---|"]
    for t, sp, de, fl, r1, r2, r3, r4 in rows:
        out.append(f"| {t} | {sp:.1f} ms | {de:.1f} ms | {fl:.1f} ms | {r1:.2f} | {r2:.2f} | {r3:.2f} | {r4:.1f} |")
    out += ["", f"Peak memory of one forward pass (process RSS, weights included): sparse {mem['sparse']:.0f} MB, "
                f"dense {mem['dense']:.0f} MB.", ""]
    for line in torch_lines:
        out.append("```\n" + line + "\n```")
    out += ["", "Reproduce: `cmake --preset release && cmake --build --preset release && "
                "/usr/bin/python3 benchmarks/report.py --update-readme`"]
    text = "\n".join(out)
    print(text)
    print("\n".join(ratios), file=sys.stderr)
    if a.update_readme:
        path = os.path.join(ROOT, "README.md")
        readme = open(path).read()
        new = re.sub(r"(<!-- results:begin -->\n).*?(<!-- results:end -->)", lambda m: m.group(1) + text + "\n" + m.group(2),
                     readme, flags=re.S)
        if new == readme and "<!-- results:begin -->" not in readme:
            sys.exit("report.py: README.md has no <!-- results:begin --> marker")
        open(path, "w").write(new)
        print("updated README.md", file=sys.stderr)


if __name__ == "__main__":
    main()
