#!/usr/bin/env python3
"""Reference MoE routing in numpy, written as Mesh TF / lingvo write it.

Dev-time only: it writes the golden fixtures in tests/fixtures/moe/ that the
C++ tests compare against. The test suite never runs Python.

    python3 scripts/reference_moe.py            # rewrite the fixtures

Each case directory holds its inputs (logits, importance, uniform, gumbel,
weights ...), a config.txt with the options, and the expected outputs.
"""
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "moe")


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def one_hot(idx, n, dtype):
    out = np.zeros(idx.shape + (n,), dtype)
    valid = (idx >= 0) & (idx < n)
    np.put_along_axis(out, np.where(valid, idx, 0)[..., None], valid[..., None].astype(dtype), axis=-1)
    return out


def exclusive_cumsum(x, axis):
    return np.cumsum(x, axis=axis) - x


def argmax(x, ties="lowest"):
    """Index of the largest entry on the last axis. ties="lowest" is tf.argmax /
    np.argmax; ties="highest" is Mesh TF's top_1 before September 2019, which
    took reduce_max(range(E) * one_hot(x == reduce_max(x)))."""
    if ties == "lowest":
        return np.argmax(x, axis=-1)
    is_max = (x == np.max(x, axis=-1, keepdims=True)).astype(np.int64)
    return np.max(np.arange(x.shape[-1]) * is_max, axis=-1)


def top2_gating(logits, capacity, policy="all", threshold=0.2, importance=None,
                normalize="before", second_place_loss=False, uniform=None, gumbel=None, ties="lowest"):
    """logits [G, S, E] -> dispatch, combine [G, S, E, C], aux_loss."""
    dt = logits.dtype
    G, S, E = logits.shape
    raw = softmax(logits)
    index_1 = argmax(raw, ties)
    mask_1 = one_hot(index_1, E, dt)
    gate_1 = np.take_along_axis(raw, index_1[..., None], -1)[..., 0]
    proxy_1 = raw
    if importance is not None:
        eq1 = (importance == 1.0).astype(dt)
        mask_1 = mask_1 * eq1[..., None]
        gate_1 = gate_1 * eq1
        proxy_1 = proxy_1 * eq1[..., None]
    without = raw * (1.0 - mask_1)
    if policy == "sampling":
        very_negative = np.array(-0.7, dt) * np.finfo(dt).max
        updated = np.where(mask_1 > 0, very_negative, logits)
        index_2 = argmax(updated + gumbel, ties)
    else:
        index_2 = argmax(without, ties)
    mask_2 = one_hot(index_2, E, dt)
    gate_2 = np.sum(without * mask_2, axis=-1)
    if importance is not None:
        mask_2 = mask_2 * (importance > 0.0).astype(dt)[..., None]
    if normalize == "before":
        denom = gate_1 + gate_2 + np.array(1e-9, dt)
        gate_1 = gate_1 / denom
        gate_2 = gate_2 / denom

    density_1 = np.mean(mask_1, axis=1)
    density_1_proxy = np.mean(proxy_1, axis=1)
    if normalize == "after":
        imp = importance if importance is not None else np.ones((G, S), dt)
        d = np.mean(imp, axis=1)[..., None] + np.array(1e-6, dt)
        density_1 = density_1 / d
        density_1_proxy = density_1_proxy / d
    loss = np.mean(density_1_proxy * density_1) * dt.type(E * E)
    if second_place_loss:
        density_2 = np.mean(mask_2, axis=1)
        normalized = without / (np.sum(without, axis=-1, keepdims=True) + np.array(1e-9, dt))
        loss = loss + np.mean(np.mean(normalized, axis=1) * density_2) * dt.type(E * E) * dt.type(0.5)

    if policy == "none":
        mask_2 = np.zeros_like(mask_2)
    elif policy == "threshold":
        mask_2 = mask_2 * (gate_2 > threshold).astype(dt)[..., None]
    elif policy == "random":
        mask_2 = mask_2 * (uniform < gate_2 / dt.type(max(threshold, 1e-9))).astype(dt)[..., None]

    pos_1 = exclusive_cumsum(mask_1, 1) * mask_1
    mask_1 = mask_1 * (pos_1 < capacity).astype(dt)
    mask_1_count = np.sum(mask_1, axis=1, keepdims=True)
    mask_1_flat = np.sum(mask_1, axis=-1)
    pos_1 = np.sum(pos_1, axis=-1)
    gate_1 = gate_1 * mask_1_flat
    pos_2 = (exclusive_cumsum(mask_2, 1) + mask_1_count) * mask_2
    mask_2 = mask_2 * (pos_2 < capacity).astype(dt)
    mask_2_flat = np.sum(mask_2, axis=-1)
    gate_2 = gate_2 * mask_2_flat
    pos_2 = np.sum(pos_2, axis=-1)
    if normalize == "after":
        denom = gate_1 + gate_2
        denom = np.where(denom > 0, denom, np.ones_like(denom))
        gate_1 = gate_1 / denom
        gate_2 = gate_2 / denom
    combine = ((gate_1 * mask_1_flat)[..., None, None] * one_hot(index_1, E, dt)[..., None]
               * one_hot(pos_1.astype(np.int64), capacity, dt)[..., None, :]
               + (gate_2 * mask_2_flat)[..., None, None] * one_hot(index_2, E, dt)[..., None]
               * one_hot(pos_2.astype(np.int64), capacity, dt)[..., None, :])
    dispatch = (combine != 0).astype(dt)
    return dispatch, combine, np.array(loss, dt)


def top2_gating_mtf_v1(logits, capacity, policy="all", threshold=0.2, max_experts=None,
                       second_place_loss=False, uniform=None, ties="lowest"):
    """Mesh TF's _top_2_gating with max_experts [batch, group] (the other
    version in the sources): logits [G, S, E] -> dispatch, combine, loss."""
    dt = logits.dtype
    G, S, E = logits.shape
    raw_gates = softmax(logits)
    expert_capacity_f = float(capacity)
    index_1 = argmax(raw_gates, ties)
    gate_1 = np.take_along_axis(raw_gates, index_1[..., None], -1)[..., 0]
    mask_1 = one_hot(index_1, E, dt)
    gates_without_top_1 = raw_gates * (1.0 - mask_1)
    index_2 = argmax(gates_without_top_1, ties)
    gate_2 = np.take_along_axis(gates_without_top_1, index_2[..., None], -1)[..., 0]
    mask_2 = one_hot(index_2, E, dt)
    if max_experts is not None:
        geq1 = (max_experts >= 1.0).astype(dt)
        geq2 = (max_experts >= 2.0).astype(dt)
        mask_1 = mask_1 * geq1[..., None]
        mask_2 = mask_2 * geq2[..., None]
        raw_gates = raw_gates * geq1[..., None]
        gates_without_top_1 = gates_without_top_1 * geq2[..., None]
    density_1 = np.mean(mask_1, axis=1)
    density_1_proxy = np.mean(raw_gates, axis=1)
    loss = np.mean(density_1_proxy * density_1) * dt.type(E * E)
    if second_place_loss:
        density_2 = np.mean(mask_2, axis=1)
        normalized = gates_without_top_1 / (np.sum(gates_without_top_1, axis=-1, keepdims=True) + np.array(1e-9, dt))
        density_2_proxy = np.mean(normalized, axis=1)
        loss = loss + np.mean(density_2_proxy * density_2) * dt.type(E * E) * dt.type(0.5)
    if policy == "none":
        mask_2 = np.zeros_like(mask_2)
    elif policy == "threshold":
        mask_2 = mask_2 * (gate_2 > threshold).astype(dt)[..., None]
    elif policy == "random":
        mask_2 = mask_2 * (uniform < gate_2 / dt.type(max(threshold, 1e-9))).astype(dt)[..., None]
    pos_1 = exclusive_cumsum(mask_1, 1) * mask_1
    mask_1 = mask_1 * (pos_1 < expert_capacity_f).astype(dt)
    mask_1_count = np.sum(mask_1, axis=1, keepdims=True)
    mask_1_flat = np.sum(mask_1, axis=-1)
    pos_1 = np.sum(pos_1, axis=-1)
    gate_1 = gate_1 * mask_1_flat
    pos_2 = exclusive_cumsum(mask_2, 1) + mask_1_count
    pos_2 = pos_2 * mask_2
    mask_2 = mask_2 * (pos_2 < expert_capacity_f).astype(dt)
    mask_2_flat = np.sum(mask_2, axis=-1)
    gate_2 = gate_2 * mask_2_flat
    pos_2 = np.sum(pos_2, axis=-1)
    denom = gate_1 + gate_2 + np.array(1e-9, dt)
    gate_1 = gate_1 / denom
    gate_2 = gate_2 / denom
    combine = ((gate_1 * mask_1_flat)[..., None, None] * one_hot(index_1, E, dt)[..., None]
               * one_hot(pos_1.astype(np.int64), capacity, dt)[..., None, :]
               + (gate_2 * mask_2_flat)[..., None, None] * one_hot(index_2, E, dt)[..., None]
               * one_hot(pos_2.astype(np.int64), capacity, dt)[..., None, :])
    dispatch = (combine != 0).astype(dt)
    return dispatch, combine, np.array(loss, dt)


def gather_k(selected_pos, values, k):
    """lingvo GatherK, line by line (num_devices=1): selected_pos [B, T] 0/1,
    values [B, T, ...] -> output [B, k, ...], padding [B, k]."""
    B, T = selected_pos.shape
    indices = 1 + np.arange(T, dtype=np.int32)[None, :]
    x = indices * selected_pos.astype(np.int32)
    # tf.math.top_k(x, k): the k largest, descending; equal values keep index order
    order = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    topk_indices = np.take_along_axis(x, order, -1)
    idx = topk_indices[:, ::-1]
    padding = (idx == 0).astype(values.dtype)
    mp_idx = np.maximum(0, idx - 1)
    output = values[np.arange(B)[:, None], mp_idx]
    return output, padding


def truncated_top2_gating(gates, capacity, ties="lowest"):
    """gates [G, S, E] -> combine [G, S, E, C] (Mesh TF _truncated_top_2_gating_mtf)."""
    dt = gates.dtype
    G, S, E = gates.shape
    index_1 = argmax(gates, ties)
    gate_1 = np.max(gates, -1)
    mask_1 = one_hot(index_1, E, dt)
    pos_1 = exclusive_cumsum(mask_1, 1) * mask_1
    mask_1 = mask_1 * (pos_1 < capacity).astype(dt)
    count_1 = np.sum(mask_1, axis=1, keepdims=True)
    flat_1 = np.sum(mask_1, -1)
    pos_1 = np.sum(pos_1, -1)
    gate_1 = gate_1 * flat_1
    space = dt.type(capacity) - count_1
    use_rate = (count_1 + 1.0) / dt.type(S)
    exhaustion = space / use_rate
    exhausted = (np.arange(S, dtype=dt)[None, :, None] > exhaustion).astype(dt)
    masked = gates - mask_1 - exhausted
    index_2 = argmax(masked, ties)
    gate_2 = np.max(masked, -1)
    mask_2 = one_hot(index_2, E, dt)
    pos_2 = (exclusive_cumsum(mask_2, 1) + count_1) * mask_2
    mask_2 = mask_2 * (pos_2 < capacity).astype(dt)
    flat_2 = np.sum(mask_2, -1)
    pos_2 = np.sum(pos_2, -1)
    gate_2 = gate_2 * flat_2
    denom = gate_1 + gate_2 + dt.type(1e-9)
    gate_1, gate_2 = gate_1 / denom, gate_2 / denom
    return ((gate_1 * flat_1)[..., None, None] * one_hot(index_1, E, dt)[..., None]
            * one_hot(pos_1.astype(np.int64), capacity, dt)[..., None, :]
            + (gate_2 * flat_2)[..., None, None] * one_hot(index_2, E, dt)[..., None]
            * one_hot(pos_2.astype(np.int64), capacity, dt)[..., None, :])


ACTIVATIONS = {
    "relu": lambda h: np.maximum(h, 0),
    "gelu": lambda h: 0.5 * h * (1 + np.vectorize(__import__("math").erf)(h / np.sqrt(2.0))),
    "gelu_tanh": lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3))),
    "silu": lambda h: h / (1 + np.exp(-h)),
}


def moe_layer(x, wg, wi, wo, capacity, activation="relu", bi=None, bo=None, **gate_kw):
    """x [G, S, M] -> outputs [G, S, M], aux_loss (GShard's einsum formulation)."""
    logits = np.einsum("gsm,me->gse", x, wg)
    dispatch, combine, loss = top2_gating(logits, capacity, **gate_kw)
    expert_inputs = np.einsum("gsec,gsm->egcm", dispatch, x)
    h = np.einsum("egcm,emh->egch", expert_inputs, wi)
    if bi is not None:
        h = h + bi[:, None, None, :]
    h = ACTIVATIONS[activation](h)
    y = np.einsum("egch,ehm->egcm", h, wo)
    if bo is not None:
        y = y + bo[:, None, None, :]
    return np.einsum("gsec,egcm->gsm", combine, y), loss


def erf(x):
    return np.vectorize(__import__("math").erf)(x)


def cv_squared(x):
    eps = 1e-10
    n = x.size + eps
    mean = np.sum(x) / n
    var = np.sum((x - mean) ** 2) / n
    return var / (mean ** 2 + eps)


def noisy_top_k_gating(x, w_gate, w_noise, normal, k, train=True, noise_epsilon=1e-2):
    """t2t NoisyTopKGating.Eval: x [B, M] -> gates [B, E], load [E], importance [E]."""
    clean = x @ w_gate
    E = w_gate.shape[1]
    if w_noise is not None:
        raw = x @ w_noise
        stddev = (np.logaddexp(0, raw) + noise_epsilon) * (1.0 if train else 0.0)
        noisy = clean + normal * stddev
        logits = noisy
    else:
        logits = clean
    m = min(k + 1, E)
    # repeated argmax (ties to the lower index), as t2t's _MyTopK
    work = logits.copy()
    top_vals, top_idx = [], []
    for i in range(m):
        a = np.argmax(work, axis=1)
        top_vals.append(work[np.arange(len(a)), a])
        top_idx.append(a)
        work[np.arange(len(a)), a] = -np.inf
    top_vals, top_idx = np.stack(top_vals, 1), np.stack(top_idx, 1)
    g = softmax(top_vals[:, :k])
    gates = np.zeros_like(clean)
    np.put_along_axis(gates, top_idx[:, :k], g, axis=1)
    if w_noise is not None and k < E:
        thr_in = top_vals[:, k:k + 1]
        thr_out = top_vals[:, k - 1:k]
        cdf = lambda v, sd: 0.5 * (1 + erf(v / (np.sqrt(2) * sd + 1e-20)))
        prob = np.where(noisy > thr_in, cdf(clean - thr_in, stddev), cdf(clean - thr_out, stddev))
        load = prob.sum(0)
    else:
        load = (gates > 0).sum(0).astype(x.dtype)
    return gates, load, gates.sum(0)


def t2t_hierarchical_moe(x, wg1, wn1, wg2, wn2, wi, wo, normal1, normal2, k1, k2, train=True):
    """t2t DistributedMixtureOfExperts.Eval with secondary gating, one device:
    x [B, M] -> ys [B, M], importance [n1, n2], load [n1, n2]."""
    eps = 1e-10
    g1, smooth1, _ = noisy_top_k_gating(x, wg1, wn1, normal1, k1, train)
    true1 = (g1 > 0).sum(0).astype(x.dtype)            # _GatesToLoad
    n1, n2 = wg2.shape[0], wg2.shape[2]
    ys = np.zeros_like(x)
    importance, load = [], []
    for i in range(n1):                                # DistributedSparseDispatcher: rows with g1 > 0
        rows = np.nonzero(g1[:, i] > 0)[0]
        xi = x[rows]
        if len(rows) == 0:
            importance.append(np.zeros(n2)); load.append(np.zeros(n2)); continue
        g2, l2, _ = noisy_top_k_gating(xi, wg2[i], None if wn2 is None else wn2[i],
                                       None if normal2 is None else normal2[i][rows], k2, train)
        g2 = g2 * g1[rows, i][:, None]                 # per_example_multiplier
        yi = np.zeros_like(xi)
        for j in range(n2):                            # SparseDispatcher, FeedForwardExpert (relu)
            r2 = np.nonzero(g2[:, j] > 0)[0]
            h = np.maximum(xi[r2] @ wi[i, j], 0)
            yi[r2] += g2[r2, j][:, None] * (h @ wo[i, j])
        ys[rows] += yi                                 # Combine(multiply_by_gates=False)
        importance.append(g2.sum(0)); load.append(l2)
    importance = np.stack(importance)
    load = np.stack(load) * (smooth1 / (true1 + eps))[:, None]
    return ys, importance, load


def moe_v0(x, wg, bg, wi, bi, wo, bo, loss_coef=1e-3, overhead=1.0):
    """Mesh TF moe_v0: x [B, L, M] -> outputs [B, L, M], loss."""
    B, L, M = x.shape
    E = wg.shape[1]
    C = min(L, int((L * 2 * overhead) / E))
    gates = softmax(np.einsum("blm,me->ble", x, wg) + bg)
    combine = truncated_top2_gating(gates, C)
    dispatch = (combine != 0).astype(x.dtype)
    ei = np.einsum("blec,blm->ebcm", dispatch, x)
    h = np.maximum(np.einsum("ebcm,emh->ebch", ei, wi) + bi[:, None, None, :], 0)
    y = np.einsum("ebch,ehm->ebcm", h, wo) + bo[:, None, None, :]
    out = np.einsum("blec,ebcm->blm", combine, y)
    importance = combine.sum(axis=(1, 3))
    return out, np.array(cv_squared(importance) * loss_coef, x.dtype)


def sentence_embeddings(x, seg):
    """lingvo GetSentenceEmbeddings, literally: ids global over all tokens; with
    N tokens, id 0 moves to N - 1 and the rest down by one, segment means over
    N segments, and the last (ids 0 and N) replaced by zeros."""
    G, S, M = x.shape
    flat, ids = x.reshape(-1, M), seg.reshape(-1)
    N = flat.shape[0]
    modified = ids + N * (ids == 0) - 1
    params = np.zeros((N, M), x.dtype)
    for k in range(N - 1):   # unsorted_segment_mean (empty segments give 0)
        if np.any(modified == k):
            params[k] = flat[modified == k].mean(0)
    return params[modified].reshape(G, S, M)


def hierarchical_moe(x, wg_o, wg_i, wi, wo, co, ci):
    """Mesh TF / t2t two-level MoE: x [B, N, M] -> outputs, outer + inner loss."""
    logits_o = np.einsum("bnm,me->bne", x, wg_o)
    d_o, c_o, loss_o = top2_gating(logits_o, co)
    eio = np.einsum("bnm,bnec->ebcm", x, d_o)
    imp = c_o.sum(axis=1).transpose(1, 0, 2)  # [E, B, C]
    imp = 0.5 * ((imp > 0.5).astype(x.dtype) + (imp > 0).astype(x.dtype))
    logits_i = np.einsum("ebcm,emf->ebcf", eio, wg_i)
    Eo, B, Co, Ei = logits_i.shape
    d_i, c_i, loss_i = top2_gating(logits_i.reshape(Eo * B, Co, Ei), ci, importance=imp.reshape(Eo * B, Co))
    d_i = d_i.reshape(Eo, B, Co, Ei, ci)
    c_i = c_i.reshape(Eo, B, Co, Ei, ci)
    ein = np.einsum("ebcm,ebcfd->efbdm", eio, d_i)
    h = np.maximum(np.einsum("efbdm,efmh->efbdh", ein, wi), 0)
    y = np.einsum("efbdh,efhm->efbdm", h, wo)
    yo = np.einsum("efbdm,ebcfd->ebcm", y, c_i)
    out = np.einsum("ebcm,bnec->bnm", yo, c_o)
    return out, np.array(loss_o + loss_i, x.dtype)


def write_case(name, arrays, config):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for k, v in arrays.items():
        v = np.asarray(v)
        np.save(os.path.join(d, k + ".npy"), np.ascontiguousarray(v) if v.ndim else v)  # keep 0-d arrays 0-d
    with open(os.path.join(d, "config.txt"), "w") as f:
        for k, v in config.items():
            f.write(f"{k} {v}\n")


def importance_draw(rng, shape, dt):
    u = rng.random(shape)
    return np.where(u < 0.2, 0.0, np.where(u < 0.4, 0.5, 1.0)).astype(dt)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    rng = np.random.default_rng(2024)
    n = 0
    for dt in (np.float64, np.float32):
        tname = "f64" if dt == np.float64 else "f32"
        for policy in ("all", "none", "threshold", "random", "sampling"):
            for normalize in ("before", "after"):
                for use_imp in (False, True):
                    G, S, E = 2, 16, 4
                    C = int(rng.integers(1, 9))
                    logits = rng.normal(size=(G, S, E)).astype(dt) * dt(2)
                    arrays = {"logits": logits}
                    kw = dict(policy=policy, threshold=0.3, normalize=normalize,
                              second_place_loss=bool(n % 3 == 0))
                    if use_imp:
                        arrays["importance"] = kw["importance"] = importance_draw(rng, (G, S), dt)
                    if policy == "random":
                        arrays["uniform"] = kw["uniform"] = rng.random((G, S)).astype(dt)
                    if policy == "sampling":
                        g = -np.log(-np.log(rng.random((G, S, E)) * 0.999998 + 1e-6))
                        arrays["gumbel"] = kw["gumbel"] = g.astype(dt)
                    dispatch, combine, loss = top2_gating(logits, C, **kw)
                    arrays.update(expected_dispatch=dispatch, expected_combine=combine, expected_aux_loss=loss)
                    cfg = dict(kind="gate", capacity=C, policy=policy, threshold=0.3, normalize=normalize,
                               second_place_loss=int(kw["second_place_loss"]))
                    write_case(f"gate_{tname}_{policy}_{normalize}_{'imp' if use_imp else 'noimp'}", arrays, cfg)
                    n += 1
        # truncated gating
        for C in (1, 3, 6):
            gates = softmax(rng.normal(size=(2, 20, 5)).astype(dt) * dt(2)).astype(dt)
            write_case(f"truncated_{tname}_c{C}", {"gates": gates, "expected_combine": truncated_top2_gating(gates, C)},
                       dict(kind="truncated", capacity=C))
        # whole layers
        for activation in ("relu", "gelu", "gelu_tanh", "silu"):
            G, S, M, H, E = 2, 12, 6, 10, 4
            C = 4
            x = rng.normal(size=(G, S, M)).astype(dt)
            wg = rng.normal(size=(M, E)).astype(dt)
            wi = (rng.normal(size=(E, M, H)) / np.sqrt(M)).astype(dt)
            wo = (rng.normal(size=(E, H, M)) / np.sqrt(H)).astype(dt)
            bi = rng.normal(size=(E, H)).astype(dt) * dt(0.1)
            bo = rng.normal(size=(E, M)).astype(dt) * dt(0.1)
            use_bias = activation in ("gelu", "silu")
            out, loss = moe_layer(x, wg, wi, wo, C, activation, bi if use_bias else None, bo if use_bias else None)
            arrays = dict(inputs=x, wg=wg, wi=wi, wo=wo, expected_outputs=out.astype(dt), expected_aux_loss=loss)
            if use_bias:
                arrays.update(bi=bi, bo=bo)
            write_case(f"moe_{tname}_{activation}", arrays, dict(kind="moe", capacity=C, activation=activation))
    # the rest of the family (float64)
    dt = np.float64
    for case, k, noisy, train in (("k2", 2, True, True), ("k1", 1, True, True), ("k4_all", 4, True, True),
                                  ("eval", 2, True, False), ("clean", 2, False, True)):
        B, M, E = 12, 5, 4
        x = rng.normal(size=(B, M))
        wg = rng.normal(size=(M, E))
        wn = rng.normal(size=(M, E)) if noisy else None
        normal = rng.normal(size=(B, E))
        gates, load, importance = noisy_top_k_gating(x, wg, wn, normal, k, train)
        arrays = dict(x=x, w_gate=wg, normal=normal, expected_gates=gates, expected_load=load,
                      expected_importance=importance, expected_loss=np.array((cv_squared(importance) + cv_squared(load)) * 0.01))
        if noisy:
            arrays["w_noise"] = wn
        write_case(f"noisy_{case}", arrays, dict(kind="noisy", k=k, train=int(train)))
    for L in (8, 16):
        B, M, H, E = 3, 5, 7, 4
        x = rng.normal(size=(B, L, M))
        w = dict(wg=rng.normal(size=(M, E)), bg=rng.normal(size=(E,)) * 0.1, wi=rng.normal(size=(E, M, H)) / 2,
                 bi=rng.normal(size=(E, H)) * 0.1, wo=rng.normal(size=(E, H, M)) / 2, bo=rng.normal(size=(E, M)) * 0.1)
        out, loss = moe_v0(x, **w)
        write_case(f"moe_v0_l{L}", dict(inputs=x, expected_outputs=out, expected_loss=loss, **w), dict(kind="moe_v0"))
    x = rng.normal(size=(2, 6, 3))
    seg = np.array([[1, 1, 2, 2, 2, 0], [3, 3, 0, 1, 4, 4]], dtype=np.int64)  # id 1 spans both groups
    emb = sentence_embeddings(x, seg)
    wg = rng.normal(size=(3, 4))
    d, c, loss = top2_gating(np.einsum("gsm,me->gse", emb, wg), 3, importance=(seg != 0).astype(dt))
    write_case("sentence", dict(inputs=x, segment_ids=seg, wg=wg, expected_embeddings=emb, expected_combine=c,
                                expected_aux_loss=loss), dict(kind="sentence", capacity=3))
    for co, ci in ((3, 2), (6, 4)):
        B, N, M, H, Eo, Ei = 2, 10, 4, 6, 3, 2
        x = rng.normal(size=(B, N, M))
        w = dict(wg_o=rng.normal(size=(M, Eo)), wg_i=rng.normal(size=(Eo, M, Ei)),
                 wi=rng.normal(size=(Eo, Ei, M, H)) / 2, wo=rng.normal(size=(Eo, Ei, H, M)) / 2)
        out, loss = hierarchical_moe(x, co=co, ci=ci, **w)
        write_case(f"hierarchical_co{co}_ci{ci}", dict(inputs=x, expected_outputs=out, expected_aux_loss=loss, **w),
                   dict(kind="hierarchical", outer_capacity=co, inner_capacity=ci))
    # ties: logits from a few integer levels (and all-zero tokens, as a
    # zero-initialised router gives) so that first and second places tie;
    # a separate generator keeps every case above unchanged.
    trng = np.random.default_rng(77)
    for dt in (np.float64, np.float32):
        tname = "f64" if dt == np.float64 else "f32"
        for C in (2, 5):
            G, S, E = 2, 12, 4
            logits = trng.integers(-1, 2, size=(G, S, E)).astype(dt)
            logits[:, ::4, :] = 0
            gates = softmax(trng.integers(-1, 2, size=(G, S, E + 1)).astype(dt)).astype(dt)
            for ties in ("lowest", "highest"):
                dispatch, combine, loss = top2_gating(logits, C, ties=ties)
                write_case(f"ties_gate_{tname}_{ties}_c{C}",
                           dict(logits=logits, expected_dispatch=dispatch, expected_combine=combine,
                                expected_aux_loss=loss),
                           dict(kind="ties", variant="gate", capacity=C, ties=ties))
                write_case(f"ties_truncated_{tname}_{ties}_c{C}",
                           dict(gates=gates, expected_combine=truncated_top2_gating(gates, C, ties)),
                           dict(kind="ties", variant="truncated", capacity=C, ties=ties))
    # Mesh TF's _top_2_gating with max_experts (its own generator, too)
    vrng = np.random.default_rng(101)
    for dt in (np.float64, np.float32):
        tname = "f64" if dt == np.float64 else "f32"
        for policy in ("all", "none", "threshold", "random"):
            for use_max in (False, True):
                G, S, E = 2, 14, 5
                C = int(vrng.integers(1, 8))
                logits = (vrng.normal(size=(G, S, E)) * 2).astype(dt)
                logits[:, ::5, :] = 0  # zero rows: ties
                ties = "highest" if use_max else "lowest"
                kw = dict(policy=policy, threshold=0.3, second_place_loss=policy in ("all", "random"), ties=ties)
                arrays = {"logits": logits}
                if use_max:
                    arrays["max_experts"] = kw["max_experts"] = vrng.choice([0.0, 1.0, 1.5, 2.0, 3.0], size=(G, S)).astype(dt)
                if policy == "random":
                    arrays["uniform"] = kw["uniform"] = vrng.random((G, S)).astype(dt)
                dispatch, combine, loss = top2_gating_mtf_v1(logits, C, **kw)
                arrays.update(expected_dispatch=dispatch, expected_combine=combine, expected_aux_loss=loss)
                write_case(f"mtf_v1_{tname}_{policy}_{'max' if use_max else 'nomax'}", arrays,
                           dict(kind="mtf_v1", capacity=C, policy=policy, threshold=0.3, ties=ties,
                                second_place_loss=int(kw["second_place_loss"])))
    # lingvo GatherK: the docstring's example, and random rows
    sel = np.array([[0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int64)
    vals = (np.arange(20, dtype=np.float64) * 2 + 1).reshape(5, 4)
    out, pad = gather_k(sel, vals, 3)
    write_case("gather_k_docstring", dict(selected=sel, values=vals, expected_output=out, expected_padding=pad),
               dict(kind="gather_k", k=3))
    sel = (vrng.random((6, 9)) < 0.4).astype(np.int64)
    vals = vrng.normal(size=(6, 9, 3))
    out, pad = gather_k(sel, vals, 4)
    write_case("gather_k_random", dict(selected=sel, values=vals, expected_output=out, expected_padding=pad),
               dict(kind="gather_k", k=4))
    # t2t's hierarchical DistributedMixtureOfExperts, noisy and not
    for case, noisy in (("noisy", True), ("clean", False)):
        B, M, H, n1, n2 = 10, 5, 6, 3, 4
        x = vrng.normal(size=(B, M))
        w = dict(w_gate=vrng.normal(size=(M, n1)), w_gate_inner=vrng.normal(size=(n1, M, n2)),
                 wi=vrng.normal(size=(n1, n2, M, H)) / 2, wo=vrng.normal(size=(n1, n2, H, M)) / 2)
        if noisy:
            w.update(w_noise=vrng.normal(size=(M, n1)), w_noise_inner=vrng.normal(size=(n1, M, n2)),
                     normal_outer=vrng.normal(size=(B, n1)), normal_inner=vrng.normal(size=(n1, B, n2)))
        ys, imp, load = t2t_hierarchical_moe(x, w["w_gate"], w.get("w_noise"), w["w_gate_inner"], w.get("w_noise_inner"),
                                             w["wi"], w["wo"], w.get("normal_outer"), w.get("normal_inner"), 2, 2)
        write_case(f"t2t_hierarchical_{case}", dict(inputs=x, expected_outputs=ys, expected_importance=imp,
                                                    expected_load=load, **w),
                   dict(kind="t2t_hierarchical", k_outer=2, k_inner=2, noisy=int(noisy)))
    # sentence ids equal to the token count are padding, as id 0 is
    x = trng.normal(size=(2, 4, 3))
    seg = np.array([[1, 8, 2, 2], [0, 8, 1, 3]], dtype=np.int64)
    write_case("sentence_pad", dict(inputs=x, segment_ids=seg, expected_embeddings=sentence_embeddings(x, seg)),
               dict(kind="sentence_pad"))
    print(f"wrote fixtures to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    sys.exit(main())
