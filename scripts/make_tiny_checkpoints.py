#!/usr/bin/env python3
"""Tiny synthetic Hugging Face checkpoints for the loader's tests.

Dev-time only: writes tests/fixtures/checkpoints/<case>/ with a config.json,
model.safetensors (or model-0000i-of-0000n.safetensors shards with
model.safetensors.index.json), inputs x.npy [T, M] (float32) and, for the MoE
layer named in case.txt, the block's expected outputs.npy [T, M] and
router_logits.npy [T, E] (float64, computed from the stored weights' exact
values with the numpy transcriptions of the HF blocks in
reference_routers.py).

    python3 scripts/make_tiny_checkpoints.py

safetensors files are written by hand (8-byte little-endian header length,
JSON header padded with spaces to a multiple of 8, then the data), so no
Python package beyond numpy is needed.
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_routers as ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "checkpoints")


def to_bf16_bits(a):
    """float32 -> bfloat16 bits, round to nearest even."""
    b = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, array of the stored bits/values)."""
    header, blobs, at = {}, [], 0
    for name, dtype, arr in sorted(tensors, key=lambda t: t[0]):
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


class Store:
    """Weights as stored (F32 or BF16) and their exact float64 values."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.items = []

    def add(self, name, a, dtype=None):
        dt = dtype or self.dtype
        a = np.asarray(a, np.float32)
        if dt == "BF16":
            bits = to_bf16_bits(a)
            self.items.append((name, "BF16", bits))
            return bf16_value(bits).astype(np.float64)
        self.items.append((name, "F32", a))
        return a.astype(np.float64)


def build(case, model_type, dtype, shards, rng):
    T, M, H, E, L = 5, 8, 6, 4, 3
    d = os.path.join(OUT, case)
    os.makedirs(d)
    st = Store(dtype)
    cfg = {"model_type": model_type, "hidden_size": M, "num_hidden_layers": L, "num_experts_per_tok": 2,
           "hidden_act": "silu", "intermediate_size": 16}
    mixtral = model_type == "mixtral"
    if mixtral:
        cfg.update(num_local_experts=E, intermediate_size=H)  # Mixtral's experts use intermediate_size
    elif model_type == "deepseek_v3":
        cfg.update(n_routed_experts=E, moe_intermediate_size=H, n_shared_experts=1, n_group=2, topk_group=1,
                   norm_topk_prob=True, routed_scaling_factor=2.5, first_k_dense_replace=1)
    elif model_type == "olmoe":
        cfg.update(num_experts=E, intermediate_size=H, norm_topk_prob=True)  # OlmoeConfig has no moe_intermediate_size
    else:
        cfg.update(num_experts=E, moe_intermediate_size=H, norm_topk_prob=(model_type != "qwen2_moe"))
        if model_type == "qwen2_moe":
            cfg.update(shared_expert_intermediate_size=7, decoder_sparse_step=1, mlp_only_layers=[2])
    x = rng.normal(size=(T, M)).astype(np.float32)
    expected = {}
    for layer in range(L):
        moe = not ((model_type == "deepseek_v3" and layer < 1) or (model_type == "qwen2_moe" and layer == 2))
        p = f"model.layers.{layer}." + ("block_sparse_moe." if mixtral else "mlp.")
        st.add(f"model.layers.{layer}.input_layernorm.weight", np.ones(M))  # not MoE: ignored by the loader
        if not moe:
            for n, shape in (("gate_proj", (16, M)), ("up_proj", (16, M)), ("down_proj", (M, 16))):
                st.add(p + n + ".weight", 0.3 * rng.normal(size=shape))
            continue
        gate = st.add(p + "gate.weight", 0.6 * rng.normal(size=(E, M)))
        names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
        experts = []
        for e in range(E):
            g = st.add(p + f"experts.{e}.{names[0]}.weight", 0.4 * rng.normal(size=(H, M)))
            u = st.add(p + f"experts.{e}.{names[1]}.weight", 0.4 * rng.normal(size=(H, M)))
            w = st.add(p + f"experts.{e}.{names[2]}.weight", 0.4 * rng.normal(size=(M, H)))
            experts.append((g, u, w))
        xd = x.astype(np.float64)
        logits = ref.linear(xd, gate)
        if model_type == "deepseek_v3":
            bias = st.add(p + "gate.e_score_correction_bias", 0.3 * rng.normal(size=E), "F32")
            Hs = H
            sg = st.add(p + "shared_experts.gate_proj.weight", 0.4 * rng.normal(size=(Hs, M)))
            su = st.add(p + "shared_experts.up_proj.weight", 0.4 * rng.normal(size=(Hs, M)))
            sd = st.add(p + "shared_experts.down_proj.weight", 0.4 * rng.normal(size=(M, Hs)))
            w, sel = ref.hf_deepseek_v3_router(logits, bias, 2, 2, 1, True, 2.5)
            y = ref.hf_moe_experts(xd, w, sel, experts, "silu") + ref.mlp(xd, sg, su, sd, "silu")
        else:
            w, sel = ref.hf_topk_softmax_router(logits, 2, mixtral or cfg.get("norm_topk_prob", False))
            y = ref.hf_moe_experts(xd, w, sel, experts, "silu")
            if model_type == "qwen2_moe":
                Hs = 7
                sg = st.add(p + "shared_expert.gate_proj.weight", 0.4 * rng.normal(size=(Hs, M)))
                su = st.add(p + "shared_expert.up_proj.weight", 0.4 * rng.normal(size=(Hs, M)))
                sd = st.add(p + "shared_expert.down_proj.weight", 0.4 * rng.normal(size=(M, Hs)))
                sgate = st.add(p + "shared_expert_gate.weight", 0.5 * rng.normal(size=(1, M)))
                y = y + ref.sigmoid(ref.linear(xd, sgate)) * ref.mlp(xd, sg, su, sd, "silu")
        expected[layer] = (y, logits)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    items = st.items
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), items)
    else:
        weight_map = {}
        for i in range(shards):
            part = items[i::shards]
            fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(os.path.join(d, fn), part)
            for name, _, _ in part:
                weight_map[name] = fn
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)
    np.save(os.path.join(d, "x.npy"), x)
    layer = max(expected)  # the last MoE layer
    np.save(os.path.join(d, "outputs.npy"), expected[layer][0])
    np.save(os.path.join(d, "router_logits.npy"), expected[layer][1])
    dense = [l for l in range(L) if l not in expected]
    with open(os.path.join(d, "case.txt"), "w") as f:
        f.write(f"layer {layer}\nlayers {L}\ndense {dense[0] if dense else -1}\nexperts {E}\nmodel {M}\n"
                f"dtype {dtype}\nshards {shards}\n")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    rng = np.random.default_rng(7)
    build("mixtral_f32", "mixtral", "F32", 1, rng)
    build("mixtral_bf16_sharded", "mixtral", "BF16", 3, rng)
    build("qwen2_moe_bf16", "qwen2_moe", "BF16", 1, rng)
    build("qwen3_moe_f32_sharded", "qwen3_moe", "F32", 2, rng)
    build("olmoe_bf16", "olmoe", "BF16", 1, rng)
    build("deepseek_v3_bf16_sharded", "deepseek_v3", "BF16", 2, rng)
    print("wrote", len(os.listdir(OUT)), "checkpoints to", os.path.relpath(OUT))


if __name__ == "__main__":
    main()
