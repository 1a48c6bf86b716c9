#!/usr/bin/python3
"""einmoe against PyTorch on the same MoE layer.

PyTorch runs the GShard / DeepSpeed formulation: top-2 gating with one-hot
masks and cumsums, then dense einsum dispatch [G,S,E,C] x [G,S,M] -> [E,G,C,M],
the experts as batched matmuls, and einsum combine. einmoe runs the same layer
through `einmoe moe` (sparse routing plan, GEMMs over filled rows). Identical
inputs and weights (numpy, fixed seed); the outputs must agree; both times
(best of --repeat, same thread count) and their ratio are printed.

    /usr/bin/python3 benchmarks/compare_pytorch.py --einmoe build/release/tools/einmoe --threads 1
    /usr/bin/python3 benchmarks/compare_pytorch.py --backward --threads 1   # forward + backward

With --backward, PyTorch runs the layer as training code writes it
(index-based dispatch: per expert its tokens gathered, two matmuls,
index_add) under autograd, against `einmoe moe --grad-outputs`; the outputs
and the gradients of x, wg, wi, wo must agree.

Needs Debian's python3-torch and python3-numpy; says so and exits 2 when
PyTorch is missing. Debian's PyTorch calls the system BLAS: with the
reference (netlib) BLAS its matmuls are ~10x slower than with OpenBLAS, which
would flatter einmoe. Install libopenblas0-pthread for a fair comparison; the
script prints the BLAS in use and warns about the reference one.

OpenBLAS picks its kernels for the CPU at load time unless OPENBLAS_CORETYPE
says otherwise; some environments (this project's development machine) set
OPENBLAS_CORETYPE=Haswell, which holds OpenBLAS to AVX2 kernels at ~44% of an
AVX-512 core's peak. The script removes the variable before PyTorch (and so
OpenBLAS) is loaded, and prints the core type OpenBLAS chose.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

# Before OpenBLAS is loaded (by numpy or torch): let it pick its own kernels.
_CORETYPE_WAS = os.environ.pop("OPENBLAS_CORETYPE", None)

import ctypes  # noqa: E402

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:
    print("compare_pytorch: PyTorch is not installed (Debian: apt-get install python3-torch)", file=sys.stderr)
    sys.exit(2)


def torch_moe(x, wg, wi, wo, C):
    """GShard's dense formulation (Mesh TF _top_2_gating, policy all, normalize before)."""
    G, S, M = x.shape
    E = wg.shape[1]
    raw = torch.softmax(torch.einsum("gsm,me->gse", x, wg), dim=-1)
    index_1 = torch.argmax(raw, dim=-1)
    mask_1 = torch.nn.functional.one_hot(index_1, E).to(x.dtype)
    gate_1 = (raw * mask_1).sum(-1)
    without = raw * (1.0 - mask_1)
    index_2 = torch.argmax(without, dim=-1)
    mask_2 = torch.nn.functional.one_hot(index_2, E).to(x.dtype)
    gate_2 = (without * mask_2).sum(-1)
    denom = gate_1 + gate_2 + 1e-9
    gate_1, gate_2 = gate_1 / denom, gate_2 / denom
    pos_1 = (torch.cumsum(mask_1, 1) - mask_1) * mask_1
    mask_1 = mask_1 * (pos_1 < C).to(x.dtype)
    count_1 = mask_1.sum(1, keepdim=True)
    flat_1 = mask_1.sum(-1)
    pos_1 = pos_1.sum(-1)
    gate_1 = gate_1 * flat_1
    pos_2 = (torch.cumsum(mask_2, 1) - mask_2 + count_1) * mask_2
    mask_2 = mask_2 * (pos_2 < C).to(x.dtype)
    flat_2 = mask_2.sum(-1)
    pos_2 = pos_2.sum(-1)
    gate_2 = gate_2 * flat_2
    oh = lambda i, n: torch.nn.functional.one_hot(i.clamp(max=n).long(), n + 1)[..., :n].to(x.dtype)
    combine = ((gate_1 * flat_1)[..., None, None] * oh(index_1, E)[..., None] * oh(pos_1, C)[..., None, :]
               + (gate_2 * flat_2)[..., None, None] * oh(index_2, E)[..., None] * oh(pos_2, C)[..., None, :])
    dispatch = (combine != 0).to(x.dtype)
    expert_inputs = torch.einsum("gsec,gsm->egcm", dispatch, x)
    h = torch.relu(torch.einsum("egcm,emh->egch", expert_inputs, wi))
    y = torch.einsum("egch,ehm->egcm", h, wo)
    return torch.einsum("gsec,egcm->gsm", combine, y)


def torch_moe_indexed(x, wg, wi, wo, C):
    """The same layer the way a PyTorch training loop writes it (index-based
    dispatch, as DeepSpeed's and Hugging Face's expert loops): the top-2
    routing with capacity from integer ops, then per expert its kept tokens
    gathered, two matmuls, weighted by their gates and index_add-ed back.
    Differentiable in x, wg, wi, wo (autograd)."""
    G, S, M = x.shape
    E = wg.shape[1]
    raw = torch.softmax(torch.einsum("gsm,me->gse", x, wg), dim=-1)
    i1 = torch.argmax(raw, -1)
    m1 = torch.nn.functional.one_hot(i1, E).to(x.dtype)
    without = raw * (1.0 - m1)
    i2 = torch.argmax(without, -1)
    g1 = torch.gather(raw, -1, i1[..., None])[..., 0]
    g2 = torch.gather(raw, -1, i2[..., None])[..., 0]
    d = g1 + g2 + 1e-9
    g1, g2 = g1 / d, g2 / d
    with torch.no_grad():  # slots: first choices in token order, then second choices
        m2 = torch.nn.functional.one_hot(i2, E).to(torch.int64)
        m1i = m1.to(torch.int64)
        p1 = (torch.cumsum(m1i, 1) - m1i).gather(-1, i1[..., None])[..., 0]
        c1 = torch.clamp(m1i.sum(1, keepdim=True), max=C)
        p2 = (torch.cumsum(m2, 1) - m2 + c1).gather(-1, i2[..., None])[..., 0]
        keep1, keep2 = p1 < C, p2 < C
    xf = x.reshape(G * S, M)
    out = torch.zeros_like(xf)
    idx = torch.cat([i1.reshape(-1), i2.reshape(-1)])
    keep = torch.cat([keep1.reshape(-1), keep2.reshape(-1)])
    gate = torch.cat([g1.reshape(-1), g2.reshape(-1)])
    tok = torch.arange(G * S).repeat(2)
    for e in range(E):
        sel = torch.nonzero((idx == e) & keep)[:, 0]
        t = tok[sel]
        y = torch.relu(xf[t] @ wi[e]) @ wo[e]
        out = out.index_add(0, t, y * gate[sel][:, None])
    return out.reshape(G, S, M)


def system_blas():
    """The BLAS library Debian's alternatives point libblas.so.3 at."""
    for path in ("/usr/lib/x86_64-linux-gnu/libblas.so.3", "/usr/lib/aarch64-linux-gnu/libblas.so.3"):
        if os.path.exists(path):
            real = os.path.realpath(path)
            return "OpenBLAS" if "openblas" in real else ("reference BLAS (netlib)" if "/blas/" in real else real)
    return "unknown"


def openblas_core():
    """The core type the OpenBLAS loaded in this process runs kernels for."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line and ".so" in line}
    except OSError:
        return None
    for lib in sorted(libs):
        try:
            get = ctypes.CDLL(lib).openblas_get_corename
            get.restype = ctypes.c_char_p
            return get().decode()
        except (OSError, AttributeError):
            continue
    return None


def compare_backward(a, x, wg, wi, wo, dy, C, einmoe_ms, ours, ours_g):
    """Forward + backward: PyTorch autograd of torch_moe_indexed (best of
    --repeat) against einmoe's; outputs and every gradient must agree."""
    torch.set_num_threads(a.threads)
    leaves = [torch.from_numpy(v).requires_grad_() for v in (x, wg, wi, wo)]
    tdy = torch.from_numpy(dy)
    best = float("inf")
    for r in range(a.repeat + 1):  # (the first is a warm-up)
        for t in leaves:
            t.grad = None
        t0 = time.perf_counter()
        out = torch_moe_indexed(*leaves, C)
        (out * tdy).sum().backward()
        ms = (time.perf_counter() - t0) * 1e3
        if r > 0:
            best = min(best, ms)
    err = np.abs(ours - out.detach().numpy()).max() / max(1.0, np.abs(out.detach().numpy()).max())
    for name, t in zip(("inputs", "wg", "wi", "wo"), leaves):
        g = t.grad.numpy()
        err = max(err, np.abs(ours_g[name] - g).max() / max(1e-30, np.abs(g).max()))
    agree = err < 1e-3
    print(f"layer: G={x.shape[0]} S={x.shape[1]} M={x.shape[2]} H={wi.shape[2]} E={wg.shape[1]} C={C}, top-2, relu, "
          f"float32, {a.threads} thread(s), forward + backward")
    blas = system_blas()
    core = openblas_core()
    if core:
        blas += f" core {core}"
    print(f"PyTorch {torch.__version__} autograd (index-based dispatch, {blas}): {best:9.2f} ms")
    if "reference" in blas:
        print("warning: PyTorch runs on the reference BLAS; install libopenblas0-pthread for a fair comparison")
    print(f"einmoe (forward_train + backward):{' ' * (len(blas) + 19)}{einmoe_ms:9.2f} ms")
    print(f"speedup: {best / einmoe_ms:.2f}x   outputs and gradients agree: {'yes' if agree else 'NO'} "
          f"(max rel diff {err:.2e})")
    sys.exit(0 if agree else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--einmoe", default="build/release/tools/einmoe")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=1024)
    ap.add_argument("--model", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--capacity-factor", type=float, default=1.25)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backward", action="store_true",
                    help="time forward + backward: einmoe moe --grad-outputs against PyTorch autograd of the "
                         "index-based layer (torch_moe_indexed)")
    a = ap.parse_args()
    if not os.path.exists(a.einmoe):
        print(f"compare_pytorch: {a.einmoe} not found (build with: cmake --preset release && "
              "cmake --build --preset release --target einmoe_cli)", file=sys.stderr)
        sys.exit(2)
    G, S, M, H, E = a.groups, a.group_size, a.model, a.hidden, a.experts
    C = int(np.ceil(2 * a.capacity_factor * S / E))  # DeepSpeed/Tutel top-2 capacity
    rng = np.random.default_rng(2024)
    x = rng.normal(size=(G, S, M)).astype(np.float32)
    wg = (rng.normal(size=(M, E)) / np.sqrt(M)).astype(np.float32)
    wi = (rng.normal(size=(E, M, H)) / np.sqrt(M)).astype(np.float32)
    wo = (rng.normal(size=(E, H, M)) / np.sqrt(H)).astype(np.float32)

    with tempfile.TemporaryDirectory() as d:
        for name, arr in dict(x=x, wg=wg, wi=wi, wo=wo).items():
            np.save(os.path.join(d, name + ".npy"), arr)
        cmd = [a.einmoe, "moe", "--inputs", f"{d}/x.npy", "--wg", f"{d}/wg.npy", "--wi", f"{d}/wi.npy",
               "--wo", f"{d}/wo.npy", "--capacity", str(C), "--threads", str(a.threads), "--repeat", str(a.repeat),
               "--out", f"{d}/out"]
        if a.backward:
            dy = rng.normal(size=x.shape).astype(np.float32)
            np.save(os.path.join(d, "dy.npy"), dy)
            cmd += ["--grad-outputs", f"{d}/dy.npy"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print("compare_pytorch: einmoe failed: " + run.stderr.strip(), file=sys.stderr)
            sys.exit(1)
        einmoe_ms = float(re.search(r"best of \d+: ([0-9.]+) ms", run.stdout).group(1))
        ours = np.load(f"{d}/out/outputs.npy")
        if a.backward:
            ours_g = {k: np.load(f"{d}/out/grad_{k}.npy") for k in ("inputs", "wg", "wi", "wo")}

    if a.backward:
        return compare_backward(a, x, wg, wi, wo, dy, C, einmoe_ms, ours, ours_g)

    torch.set_num_threads(a.threads)
    tx, twg, twi, two = (torch.from_numpy(v) for v in (x, wg, wi, wo))
    with torch.no_grad():
        out = torch_moe(tx, twg, twi, two, C)  # warm up
        best = float("inf")
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = torch_moe(tx, twg, twi, two, C)
            best = min(best, (time.perf_counter() - t0) * 1e3)
    theirs = out.numpy()
    err = np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max())
    agree = err < 1e-4
    print(f"layer: G={G} S={S} M={M} H={H} E={E} C={C}, top-2, relu, float32, {a.threads} thread(s)")
    blas = system_blas()
    core = openblas_core()
    if core:
        blas += f" core {core}"
    if _CORETYPE_WAS is not None:
        print(f"note: unset OPENBLAS_CORETYPE={_CORETYPE_WAS} so OpenBLAS picks its kernels for this CPU")
    print(f"PyTorch {torch.__version__} (dense einsum dispatch, {blas}): {best:9.2f} ms")
    if "reference" in blas:
        print("warning: PyTorch runs on the reference BLAS; install libopenblas0-pthread for a fair comparison")
    print(f"einmoe (sparse plan):{' ' * (len(blas) + 26)}{einmoe_ms:9.2f} ms")
    print(f"speedup: {best / einmoe_ms:.2f}x   outputs agree: {'yes' if agree else 'NO'} (max rel diff {err:.2e})")
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()
