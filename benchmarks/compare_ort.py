#!/usr/bin/python3
"""einmoe against ONNX Runtime's CPU MoE operator on the same layer.

ONNX Runtime (the npm package onnxruntime-node, which ships the CPU library)
runs a two-node ONNX model: MatMul (router logits = x @ wg) and the
com.microsoft MoE operator (softmax over experts, top-2, weights normalized
over the chosen two, relu experts, weighted sum; no capacity, no drops).
einmoe runs the same layer through `einmoe moe` with capacity = group size
(no drops), Mesh TF's normalize-before (the same weights up to its 1e-9
epsilon) and every second expert kept (policy all). Identical inputs and
weights (numpy, fixed seed); the outputs must agree; best-of-N times and the
ratio are printed for each thread count, for einmoe in fp32 and bf16.

    npm install --prefix build/ort --ignore-scripts onnxruntime-node@1.30
    /usr/bin/python3 benchmarks/compare_ort.py --einmoe build/release/tools/einmoe

The ONNX model is written by hand (the protobuf wire format below), so the
python `onnx` package is not needed; numpy is. ORT's MoE weights are
[E, inter, hidden] for fc1 and [E, hidden, inter] for fc2: each expert's
matrix transposed from einmoe's [E, M, H] and [E, H, M].

Dev-time only: never part of the build or the tests. Exits 2 with a message
when node, onnxruntime-node or the einmoe binary is missing.
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

# ---- a minimal protobuf writer for ONNX's ModelProto -------------------------


def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1  # int64 as two's complement
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire):
    return _varint(field << 3 | wire)


def _int(field, v):
    return _key(field, 0) + _varint(v)


def _bytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return _key(field, 2) + _varint(len(b)) + b


def _tensor(name, arr):
    """TensorProto: dims=1, data_type=2 (FLOAT=1), name=8, raw_data=9."""
    arr = np.ascontiguousarray(arr, dtype="<f4")
    return b"".join(_int(1, d) for d in arr.shape) + _int(2, 1) + _bytes(8, name) + _bytes(9, arr.tobytes())


def _value_info(name, shape):
    """ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1, shape=2}}}."""
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, 1) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _attr_int(name, v):
    return _bytes(1, name) + _int(3, v) + _int(20, 2)  # type INT


def _attr_str(name, s):
    return _bytes(1, name) + _bytes(4, s) + _int(20, 3)  # type STRING


def _node(op, inputs, outputs, name, domain="", attrs=()):
    body = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    body += _bytes(3, name) + _bytes(4, op) + b"".join(_bytes(5, a) for a in attrs)
    if domain:
        body += _bytes(7, domain)
    return body


def moe_model(N, M, H, E, wg, fc1, fc2):
    """ModelProto: x [N, M] -> MatMul(x, wg) -> MoE(x, logits, fc1, -, fc2) -> y [N, M]."""
    nodes = [
        _node("MatMul", ["x", "wg"], ["logits"], "router"),
        _node("MoE", ["x", "logits", "fc1", "", "fc2"], ["y"], "moe", "com.microsoft",
              [_attr_str("activation_type", "relu"), _attr_int("k", 2), _attr_int("normalize_routing_weights", 1)]),
    ]
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "einmoe_compare")
    graph += _bytes(5, _tensor("wg", wg)) + _bytes(5, _tensor("fc1", fc1)) + _bytes(5, _tensor("fc2", fc2))
    graph += _bytes(11, _value_info("x", [N, M])) + _bytes(12, _value_info("y", [N, M]))
    opsets = _bytes(8, _bytes(1, "") + _int(2, 17)) + _bytes(8, _bytes(1, "com.microsoft") + _int(2, 1))
    return _int(1, 8) + _bytes(2, "einmoe compare_ort.py") + _bytes(7, graph) + opsets


# ---- the node harness ----------------------------------------------------------

HARNESS = r"""
const fs = require('fs');
const ort = require('onnxruntime-node');
const [model, xPath, yPath, N, M, threads, repeat] = process.argv.slice(2);
(async () => {
  const session = await ort.InferenceSession.create(model, {
    executionProviders: ['cpu'], intraOpNumThreads: Number(threads), interOpNumThreads: 1,
    graphOptimizationLevel: 'all'});
  const buf = fs.readFileSync(xPath);
  const x = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  const feeds = {x: new ort.Tensor('float32', x, [Number(N), Number(M)])};
  let out = await session.run(feeds);  // warm up
  let best = Infinity;
  for (let r = 0; r < Number(repeat); ++r) {
    const t0 = process.hrtime.bigint();
    out = await session.run(feeds);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  fs.writeFileSync(yPath, Buffer.from(out.y.data.buffer, out.y.data.byteOffset, out.y.data.byteLength));
  console.log(JSON.stringify({best_ms: best, version: require('onnxruntime-node/package.json').version}));
})().catch(e => { console.error(String(e)); process.exit(1); });
"""


def fail(msg, status=2):
    print("compare_ort: " + msg, file=sys.stderr)
    sys.exit(status)


def run_einmoe(a, d, C, threads, precision):
    cmd = [a.einmoe, "moe", "--inputs", f"{d}/x.npy", "--wg", f"{d}/wg.npy", "--wi", f"{d}/wi.npy",
           "--wo", f"{d}/wo.npy", "--capacity", str(C), "--policy", "all", "--normalize", "before",
           "--activation", "relu", "--precision", precision, "--threads", str(threads),
           "--repeat", str(a.repeat), "--out", f"{d}/out_{precision}_{threads}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        fail("einmoe failed: " + run.stderr.strip(), 1)
    ms = float(re.search(r"best of \d+: ([0-9.]+) ms", run.stdout).group(1))
    return ms, np.load(f"{d}/out_{precision}_{threads}/outputs.npy")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--einmoe", default="build/release/tools/einmoe")
    ap.add_argument("--ort-dir", default="build/ort", help="npm prefix holding node_modules/onnxruntime-node")
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=1024)
    ap.add_argument("--model", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    node = shutil.which("node")
    if not node:
        fail("node is not installed (Debian: apt-get install nodejs npm)")
    module = os.path.join(os.path.abspath(a.ort_dir), "node_modules")
    if not os.path.isdir(os.path.join(module, "onnxruntime-node")):
        fail(f"onnxruntime-node is not installed under {a.ort_dir} "
             f"(npm install --prefix {a.ort_dir} --ignore-scripts onnxruntime-node@1.30)")
    if not os.path.exists(a.einmoe):
        fail(f"{a.einmoe} not found (cmake --preset release && cmake --build --preset release --target einmoe_cli)")

    G, S, M, H, E = a.groups, a.group_size, a.model, a.hidden, a.experts
    N = G * S
    rng = np.random.default_rng(2024)
    x = rng.normal(size=(G, S, M)).astype(np.float32)
    wg = (rng.normal(size=(M, E)) / np.sqrt(M)).astype(np.float32)
    wi = (rng.normal(size=(E, M, H)) / np.sqrt(M)).astype(np.float32)
    wo = (rng.normal(size=(E, H, M)) / np.sqrt(H)).astype(np.float32)

    results = []
    env = dict(os.environ, NODE_PATH=module)
    with tempfile.TemporaryDirectory() as d:
        for name, arr in dict(x=x, wg=wg, wi=wi, wo=wo).items():
            np.save(os.path.join(d, name + ".npy"), arr)
        with open(f"{d}/moe.onnx", "wb") as f:
            f.write(moe_model(N, M, H, E, wg, wi.transpose(0, 2, 1), wo.transpose(0, 2, 1)))
        x.tofile(f"{d}/x.bin")
        with open(f"{d}/harness.js", "w") as f:
            f.write(HARNESS)
        print(f"layer: G={G} S={S} M={M} H={H} E={E}, top-2 of softmax, normalized, relu, no drops (C={S}), float32")
        for t in a.threads:
            run = subprocess.run([node, f"{d}/harness.js", f"{d}/moe.onnx", f"{d}/x.bin", f"{d}/y.bin", str(N), str(M),
                                  str(t), str(a.repeat)], capture_output=True, text=True, env=env)
            if run.returncode != 0:
                fail("onnxruntime failed: " + (run.stderr.strip().splitlines() or ["?"])[-1], 1)
            info = json.loads(run.stdout.strip().splitlines()[-1])
            theirs = np.fromfile(f"{d}/y.bin", dtype=np.float32).reshape(G, S, M)
            scale = max(1e-30, float(np.abs(theirs).max()))
            row = {"threads": t, "ort_ms": info["best_ms"], "ort_version": info["version"]}
            print(f"-- {t} thread(s)")
            print(f"  ONNX Runtime {info['version']} MoE (fp32):  {info['best_ms']:9.2f} ms")
            ok = True
            for precision, tol in (("fp32", 1e-4), ("bf16", 1e-2)):
                ms, ours = run_einmoe(a, d, S, t, precision)
                err = float(np.abs(ours - theirs).max()) / scale
                agree = err <= tol
                ok = ok and agree
                row[f"einmoe_{precision}_ms"] = ms
                row[f"einmoe_{precision}_rel_err"] = err
                print(f"  einmoe {precision}:                    {ms:9.2f} ms   {info['best_ms'] / ms:5.2f}x faster   "
                      f"outputs agree: {'yes' if agree else 'NO'} (max |diff| / max |y| {err:.1e}, bound {tol:g})")
            results.append(row)
            if t == 1:
                for precision, target in (("fp32", 1.15), ("bf16", 2.0)):
                    r = info["best_ms"] / row[f"einmoe_{precision}_ms"]
                    print(f"  target: einmoe {precision} >= {target}x ONNX Runtime fp32 at 1 thread: "
                          f"{'met' if r >= target else 'NOT MET'} ({r:.2f}x)")
            if not ok:
                fail("outputs disagree", 1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
