#!/usr/bin/env python3
"""Writes the fuzz harnesses' seed corpus (fuzz/corpus/<harness>/); dev-time only.

    python3 fuzz/make_corpus.py
"""
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def path(*p):
    os.makedirs(os.path.join(HERE, "corpus", *p[:-1]), exist_ok=True)
    return os.path.join(HERE, "corpus", *p)


def npy(name, arr, version=None):
    with open(path("npy", name), "wb") as f:
        np.lib.format.write_array(f, arr, version=version)


def safetensors(tensors):
    header, data = {}, b""
    for n, (dt, a) in tensors.items():
        b = a.tobytes()
        header[n] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def main():
    npy("f32_2x3", np.arange(6, dtype=np.float32).reshape(2, 3))
    npy("bool_4", np.array([True, False, True, True]))
    npy("i64_scalar", np.array(7, dtype=np.int64))
    npy("f64_empty", np.zeros((0, 3)))
    npy("i32_1", np.array([5], dtype=np.int32))
    npy("f32_v2", np.ones((2, 2), np.float32), version=(2, 0))
    for name, text in [("batch", "batch:8,length:512"), ("empty", ""), ("zero", "a:0,b:3"), ("spaces", " x : 1 , y:2 ")]:
        with open(path("shape", name), "w") as f:
            f.write(text)
    with open(path("cli_args", "gate"), "wb") as f:
        f.write(b"--capacity\x004\x00--threshold\x000.5\x00--out\x00d\x00--dense")
    with open(path("cli_args", "bad"), "wb") as f:
        f.write(b"--threads\x00100000\x00--capacity")
    with open(path("safetensors", "f32_bf16"), "wb") as f:
        f.write(safetensors({"a": ("F32", np.arange(6, dtype=np.float32).reshape(2, 3)),
                             "b": ("BF16", np.array([0x3f80, 0x4000], dtype=np.uint16))}))
    with open(path("safetensors", "f16"), "wb") as f:
        f.write(safetensors({"h": ("F16", np.array([1, 2, 3], dtype=np.float16))}))


if __name__ == "__main__":
    main()
