#!/usr/bin/env python3
"""Reference beam search in numpy, written as Mesh TF's beam_search writes it.

Dev-time only: writes the golden cases in tests/fixtures/decoding/ that the
C++ tests (and the `einmoe beam` tests) compare against; the test suite never
runs Python. Run with Debian's numpy:  /usr/bin/python3 scripts/reference_decoding.py

The model is the bigram model of `einmoe beam`: the logits of a beam at step
i are row T[prev] of the transitions, prev being its token at position i - 1
(or the row's start token at step 0).
"""
import os
import shutil

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "decoding")
INF = 1e7


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def top_k(x, k):
    """indices of the k largest along the last axis, ties to the lower index"""
    order = np.argsort(-x, axis=-1, kind="stable")
    return order[..., :k]


def beam_search(T, start, B, K, L, alpha, eos=1, stop_early=True, decode_length=None):
    V = T.shape[0]
    decode_length = L if decode_length is None else min(decode_length, L)
    alive_seq = np.zeros((B, K, L), np.int64)
    alive_lp = np.full((B, K), -INF)
    alive_lp[:, 0] = 0.0
    fin_seq = alive_seq.copy()
    fin_scores = np.full((B, K), -INF)
    fin_flags = np.zeros((B, K), bool)

    def is_finished(i):
        if not stop_early:
            return i < decode_length
        max_lp = ((5.0 + decode_length) / 6.0) ** alpha
        lower = alive_lp[:, 0] / max_lp
        lowest = np.min(fin_scores * fin_flags, axis=1)
        lowest = lowest + (1.0 - fin_flags.any(1)) * -INF
        return i < decode_length and not np.all(lowest > lower)

    i = 0
    while is_finished(i):
        prev = np.repeat(start[:, None], K, 1) if i == 0 else alive_seq[:, :, i - 1]
        logits = T[prev]  # [B, K, V]
        log_probs = log_softmax(logits) + alive_lp[:, :, None]
        lp = ((5.0 + (i + 1)) / 6.0) ** alpha
        scores = (log_probs / lp).reshape(B, K * V)
        ids = top_k(scores, 2 * K)
        top_scores = np.take_along_axis(scores, ids, 1)
        top_lp = top_scores * lp
        beam, tok = ids // V, ids % V
        top_seq = np.take_along_axis(alive_seq, beam[:, :, None], 1).copy()
        top_seq[:, :, i] = tok
        top_fin = tok == eos
        # grow_alive
        a = top_k(top_scores + top_fin * -INF, K)
        alive_seq = np.take_along_axis(top_seq, a[:, :, None], 1)
        alive_lp = np.take_along_axis(top_lp, a, 1)
        # grow_finished
        curr = top_scores + (1.0 - top_fin) * -INF
        all_seq = np.concatenate([fin_seq, top_seq], 1)
        all_scores = np.concatenate([fin_scores, curr], 1)
        all_flags = np.concatenate([fin_flags, top_fin], 1)
        f = top_k(all_scores, K)
        fin_seq = np.take_along_axis(all_seq, f[:, :, None], 1)
        fin_scores = np.take_along_axis(all_scores, f, 1)
        fin_flags = np.take_along_axis(all_flags, f, 1)
        i += 1
    any_fin = fin_flags.any(1)
    fin_seq = np.where(any_fin[:, None, None], fin_seq, alive_seq)
    fin_scores = np.where(any_fin[:, None], fin_scores, alive_lp)
    return fin_seq, fin_scores, i


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    rng = np.random.default_rng(7)
    cases = [
        dict(V=5, B=2, K=2, L=6, alpha=0.0, stop_early=True),
        dict(V=6, B=3, K=3, L=8, alpha=0.6, stop_early=True),
        dict(V=4, B=2, K=2, L=5, alpha=1.0, stop_early=False),
        dict(V=7, B=1, K=4, L=10, alpha=0.6, stop_early=True, decode_length=6),
        dict(V=3, B=2, K=1, L=4, alpha=0.2, stop_early=True),
    ]
    for n, c in enumerate(cases):
        T = rng.normal(size=(c["V"], c["V"])) * 2.0
        start = rng.integers(0, c["V"], size=c["B"]).astype(np.int64)
        ids, scores, steps = beam_search(T, start, c["B"], c["K"], c["L"], c["alpha"], 1, c["stop_early"],
                                         c.get("decode_length"))
        d = os.path.join(OUT, f"beam_{n}")
        os.makedirs(d)
        np.save(os.path.join(d, "transitions.npy"), T)
        np.save(os.path.join(d, "start.npy"), start)
        np.save(os.path.join(d, "expected_ids.npy"), ids.astype(np.int64))
        np.save(os.path.join(d, "expected_scores.npy"), scores)
        np.save(os.path.join(d, "expected_steps.npy"), np.array(steps, np.int64))
        with open(os.path.join(d, "config.txt"), "w") as f:
            f.write(f"kind beam\nbatch {c['B']}\nbeam {c['K']}\nlength {c['L']}\nalpha {c['alpha']}\n"
                    f"stop_early {int(c['stop_early'])}\ndecode_length {c.get('decode_length', -1)}\n")
    print(f"wrote fixtures to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
