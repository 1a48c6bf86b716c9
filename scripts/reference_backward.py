#!/usr/bin/env python3
"""Gradients of MoE layers by PyTorch autograd of the sources' formulations.

Dev-time only: writes the golden fixtures in tests/fixtures/backward/ that
the C++ tests (tests/test_backward.cpp, "[backward][fixtures]") reproduce.
The test suite never runs Python. Needs Debian's python3-torch:

    /usr/bin/python3 scripts/reference_backward.py

The forward passes are torch transcriptions of the same sources as
scripts/reference_moe.py and scripts/reference_routers.py (numpy), so that
autograd differentiates them as the sources' frameworks do: the discrete
choices (argmax, top-k indices, positions, capacity masks, policy draws)
come out of integer or comparison ops that carry no gradient; everything
else is differentiated.
  - Mesh TF _top_2_gating / lingvo Top2GatingOnLogits and GShard's einsum
    layer (mesh_tensorflow/transformer/moe.py, lingvo gshard_layers.py);
  - flaxformer TokensChooseMaskedRouter (with batch_prioritized_routing),
    ExpertsChooseMaskedRouter, _load_balancing_loss, _router_z_loss, used in
    a layer of GShard's einsums;
  - Hugging Face MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock (shared expert
    and its gate), DeepseekV3MoE (DeepseekV3TopkRouter: sigmoid, bias,
    group-limited top-k, normalization, scaling; shared experts), with
    flaxformer's losses on the router scores (for sigmoid scores normalized
    to sum 1 per token, as DeepSeek-V3's sequence-wise balance loss does).

The objective is L = <outputs, dy> + aux_coef * aux_loss + z_coef * z_loss.
Weights are saved in einmoe's layout: wg [M, E], wi / wi_gate [E, M, H],
wo [E, H, M], bi [E, H], bo [E, M], shared_wi / shared_wi_gate [M, Hs],
shared_wo [Hs, M], shared_gate [M]; each gradient as grad_<name>.
"""
import os
import shutil

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "backward")

ACT = {
    "relu": torch.relu,
    "gelu": lambda h: torch.nn.functional.gelu(h),
    "gelu_tanh": lambda h: torch.nn.functional.gelu(h, approximate="tanh"),
    "silu": torch.nn.functional.silu,
}


def one_hot(idx, n, dtype):
    """one_hot of integer indices (no gradient); -1 or >= n gives zeros."""
    valid = (idx >= 0) & (idx < n)
    out = torch.nn.functional.one_hot(torch.where(valid, idx, torch.zeros_like(idx)), n).to(dtype)
    return out * valid[..., None].to(dtype)


def exclusive_cumsum(x, dim):
    return torch.cumsum(x, dim) - x


def stable_argsort(x, dim=-1):
    """np.argsort(kind="stable") (torch 1.13's argsort has no stable flag)."""
    return torch.sort(x, dim=dim, stable=True)[1]


def stable_topk(x, k):
    """torch.topk with equal values ordered by lower index (jax.lax.top_k)."""
    idx = stable_argsort(-x.detach())[..., :k]
    return torch.gather(x, -1, idx), idx


# ------------------------------------------------------ Mesh TF / lingvo

def top2_gating(logits, capacity, policy="all", threshold=0.2, importance=None, normalize="before",
                second_place_loss=False):
    """Mesh TF _top_2_gating (and lingvo Top2GatingOnLogits' normalize
    after): logits [G, S, E] -> dispatch, combine [G, S, E, C], aux_loss."""
    dt = logits.dtype
    G, S, E = logits.shape
    raw = torch.softmax(logits, -1)
    index_1 = torch.argmax(raw, -1)
    mask_1 = one_hot(index_1, E, dt)
    gate_1 = torch.gather(raw, -1, index_1[..., None])[..., 0]
    proxy_1 = raw
    if importance is not None:
        eq1 = (importance == 1.0).to(dt)
        mask_1 = mask_1 * eq1[..., None]
        gate_1 = gate_1 * eq1
        proxy_1 = proxy_1 * eq1[..., None]
    without = raw * (1.0 - mask_1)
    index_2 = torch.argmax(without, -1)
    mask_2 = one_hot(index_2, E, dt)
    gate_2 = torch.sum(without * mask_2, -1)
    if importance is not None:
        mask_2 = mask_2 * (importance > 0.0).to(dt)[..., None]
    if normalize == "before":
        denom = gate_1 + gate_2 + 1e-9
        gate_1 = gate_1 / denom
        gate_2 = gate_2 / denom
    density_1 = torch.mean(mask_1, 1)
    density_1_proxy = torch.mean(proxy_1, 1)
    if normalize == "after":
        imp = importance if importance is not None else torch.ones((G, S), dtype=dt)
        d = torch.mean(imp, 1)[..., None] + 1e-6
        density_1 = density_1 / d
        density_1_proxy = density_1_proxy / d
    loss = torch.mean(density_1_proxy * density_1) * (E * E)
    if second_place_loss:
        density_2 = torch.mean(mask_2, 1)
        normalized = without / (torch.sum(without, -1, keepdim=True) + 1e-9)
        loss = loss + torch.mean(torch.mean(normalized, 1) * density_2) * (E * E) * 0.5
    if policy == "none":
        mask_2 = torch.zeros_like(mask_2)
    elif policy == "threshold":
        mask_2 = mask_2 * (gate_2 > threshold).to(dt)[..., None]
    pos_1 = exclusive_cumsum(mask_1, 1) * mask_1
    mask_1 = mask_1 * (pos_1 < capacity).to(dt)
    mask_1_count = torch.sum(mask_1, 1, keepdim=True)
    mask_1_flat = torch.sum(mask_1, -1)
    pos_1 = torch.sum(pos_1, -1)
    gate_1 = gate_1 * mask_1_flat
    pos_2 = (exclusive_cumsum(mask_2, 1) + mask_1_count) * mask_2
    mask_2 = mask_2 * (pos_2 < capacity).to(dt)
    mask_2_flat = torch.sum(mask_2, -1)
    gate_2 = gate_2 * mask_2_flat
    pos_2 = torch.sum(pos_2, -1)
    if normalize == "after":
        denom = gate_1 + gate_2
        denom = torch.where(denom > 0, denom, torch.ones_like(denom))
        gate_1 = gate_1 / denom
        gate_2 = gate_2 / denom
    combine = ((gate_1 * mask_1_flat)[..., None, None] * one_hot(index_1, E, dt)[..., None]
               * one_hot(pos_1.long(), capacity, dt)[..., None, :]
               + (gate_2 * mask_2_flat)[..., None, None] * one_hot(index_2, E, dt)[..., None]
               * one_hot(pos_2.long(), capacity, dt)[..., None, :])
    dispatch = (combine != 0).to(dt).detach()
    return dispatch, combine, loss


def gshard_experts(x, dispatch, combine, w, act):
    """GShard's einsums: x [G, S, M] -> [G, S, M]."""
    expert_inputs = torch.einsum("gsec,gsm->egcm", dispatch, x)
    h = torch.einsum("egcm,emh->egch", expert_inputs, w["wi"])
    if "bi" in w:
        h = h + w["bi"][:, None, None, :]
    if "wi_gate" in w:
        g = torch.einsum("egcm,emh->egch", expert_inputs, w["wi_gate"])
        h = ACT[act](g) * h
    else:
        h = ACT[act](h)
    y = torch.einsum("egch,ehm->egcm", h, w["wo"])
    if "bo" in w:
        y = y + w["bo"][:, None, None, :]
    return torch.einsum("gsec,egcm->gsm", combine, y)


# ------------------------------------------------------------ flaxformer

def flaxformer_load_balancing_loss(router_probs, expert_indices):
    num_experts = router_probs.shape[-1]
    expert_mask = one_hot(expert_indices, num_experts, router_probs.dtype)
    expert_mask = torch.max(expert_mask, -2)[0]
    tokens_per_group_and_expert = torch.mean(expert_mask, -2)
    router_prob_per_group_and_expert = torch.mean(router_probs, -2)
    return torch.mean(tokens_per_group_and_expert * router_prob_per_group_and_expert) * num_experts ** 2


def flaxformer_z_loss(router_logits):
    num_groups, tokens_per_group, _ = router_logits.shape
    log_z = torch.logsumexp(router_logits, -1)
    return torch.sum(log_z ** 2) / (num_groups * tokens_per_group)


def flaxformer_tokens_choose(router_logits, k, expert_capacity, batch_prioritized_routing):
    """TokensChooseMaskedRouter: combine, dispatch [G, S, E, C], aux, z."""
    router_probs = torch.softmax(router_logits, -1)
    num_groups, tokens_per_group, num_experts = router_probs.shape
    expert_gate, expert_index = stable_topk(router_probs, k)
    auxiliary_loss = flaxformer_load_balancing_loss(router_probs, expert_index)
    if batch_prioritized_routing:
        permutation = stable_argsort(-expert_gate[..., 0].detach())
        expert_index = torch.gather(expert_index, -2, permutation[..., None].expand(-1, -1, k))
    expert_index = expert_index.transpose(1, 2).reshape(num_groups, -1)
    expert_mask = one_hot(expert_index, num_experts, torch.int64)
    token_priority = torch.cumsum(expert_mask, 1) * expert_mask - 1
    token_priority = token_priority.reshape((num_groups, k, -1, num_experts)).transpose(1, 2)
    token_priority = torch.max(token_priority, 2)[0]
    if batch_prioritized_routing:
        inv_permutation = stable_argsort(permutation)
        token_priority = torch.gather(token_priority, -2, inv_permutation[..., None].expand(-1, -1, num_experts))
    dispatch_mask = one_hot(token_priority, expert_capacity, router_probs.dtype)
    combine_array = torch.einsum("...te,...tec->...tec", router_probs, dispatch_mask)
    return combine_array, dispatch_mask, auxiliary_loss, flaxformer_z_loss(router_logits)


def flaxformer_experts_choose(router_logits, expert_capacity):
    """ExpertsChooseMaskedRouter: combine, dispatch [G, S, E, C], z."""
    router_probs = torch.softmax(router_logits, -1)
    tokens_per_group = router_probs.shape[1]
    expert_gate, expert_index = stable_topk(router_probs.transpose(1, 2), expert_capacity)  # [G, E, C]
    dispatch_mask = one_hot(expert_index, tokens_per_group, router_probs.dtype)  # [G, E, C, T]
    dispatch_mask = dispatch_mask.permute(0, 3, 1, 2)  # [G, T, E, C]
    combine_array = torch.einsum("...ec,...tec->...tec", expert_gate, dispatch_mask)
    return combine_array, dispatch_mask, flaxformer_z_loss(router_logits)


# ---------------------------------------------------------- Hugging Face

def hf_mlp(x, gate_proj, up_proj, down_proj, act):
    """MixtralBlockSparseTop2MLP / Qwen2MoeMLP / DeepseekV3MLP (weights [out, in])."""
    return (ACT[act](x @ gate_proj.T) * (x @ up_proj.T)) @ down_proj.T


def hf_experts(x, weights, selected, w1, w3, w2, act):
    """The experts loop of the HF blocks: index_add of each expert's tokens."""
    out = torch.zeros_like(x)
    for e in range(w1.shape[0]):
        token_idx, which = torch.where(selected == e)
        if token_idx.numel() == 0:
            continue
        y = hf_mlp(x[token_idx], w1[e], w3[e], w2[e], act) * weights[token_idx, which][:, None]
        out = out.index_add(0, token_idx, y)
    return out


def hf_topk_softmax(router_logits, top_k, norm_topk_prob):
    routing_weights = torch.softmax(router_logits, 1)
    routing_weights, selected = stable_topk(routing_weights, top_k)
    if norm_topk_prob:
        routing_weights = routing_weights / torch.sum(routing_weights, -1, keepdim=True)
    return routing_weights, selected


def hf_deepseek_v3_router(router_logits, bias, top_k, n_group, topk_group, routed_scaling_factor):
    """DeepseekV3TopkRouter (norm_topk_prob): the choice uses the biased
    scores without gradient; the weights the unbiased sigmoid scores."""
    n = router_logits.shape[-1]
    scores = torch.sigmoid(router_logits)
    choice = scores.detach() + bias[None, :]
    group_scores = stable_topk(choice.reshape(-1, n_group, n // n_group), 2)[0].sum(-1)
    group_idx = stable_topk(group_scores, topk_group)[1]
    group_mask = torch.zeros_like(group_scores).scatter(1, group_idx, 1.0)
    score_mask = group_mask[..., None].expand(-1, n_group, n // n_group).reshape(-1, n)
    choice = torch.where(score_mask.bool(), choice, torch.zeros_like(choice))
    topk_indices = stable_topk(choice, top_k)[1]
    w = torch.gather(scores, 1, topk_indices)
    w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * routed_scaling_factor, topk_indices


# ------------------------------------------------------------------ cases

def write_case(name, arrays, config):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for k, v in arrays.items():
        v = v.detach().numpy() if torch.is_tensor(v) else np.asarray(v)
        np.save(os.path.join(d, k + ".npy"), v if v.ndim == 0 else np.ascontiguousarray(v))
    with open(os.path.join(d, "config.txt"), "w") as f:
        for k, v in config.items():
            f.write(f"{k} {v}\n")


def leaf(rng, shape, dt, scale=1.0):
    return torch.tensor(scale * rng.normal(size=shape), dtype=dt, requires_grad=True)


def finish(name, x, w, dy, out, aux, z, coefs, config, extra=None):
    """Backward of L, then the case: inputs, weights, dy, expected values."""
    aux_coef, z_coef = coefs
    L = torch.sum(out * dy) + aux_coef * aux + z_coef * z
    L.backward()
    arrays = dict(x=x, dy=dy, outputs=out, aux_loss=aux, z_loss=z, grad_inputs=x.grad)
    for k, v in w.items():
        arrays[k] = v
        arrays["grad_" + k] = v.grad
    arrays.update(extra or {})
    config = dict(config, aux_coef=aux_coef, z_coef=z_coef)
    write_case(name, arrays, config)


def gshard_cases(rng):
    G, S, M, H, E = 2, 8, 5, 6, 4
    specs = [
        ("before_relu", dict(capacity=3), "relu", True, False),
        ("after_importance_second_place", dict(capacity=4, normalize="after", second_place_loss=True), "gelu",
         False, True),
        ("threshold_gated", dict(capacity=3, policy="threshold", threshold=0.3), "silu", True, False),
    ]
    for dt, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        for name, kw, act, biases, importance in specs:
            x = leaf(rng, (G, S, M), dt)
            w = dict(wg=leaf(rng, (M, E), dt, 0.8), wi=leaf(rng, (E, M, H), dt, 0.5), wo=leaf(rng, (E, H, M), dt, 0.5))
            if biases:
                w["bi"] = leaf(rng, (E, H), dt, 0.3)
                w["bo"] = leaf(rng, (E, M), dt, 0.3)
            if name.endswith("gated"):
                w["wi_gate"] = leaf(rng, (E, M, H), dt, 0.5)
            imp = None
            extra = {}
            if importance:
                imp_np = np.where(rng.uniform(size=(G, S)) < 0.2, 0.0, 1.0)
                imp_np[:, 3] = 0.5
                imp = torch.tensor(imp_np, dtype=dt)
                extra["importance"] = imp
            logits = torch.einsum("gsm,me->gse", x, w["wg"])
            dispatch, combine, aux = top2_gating(logits, importance=imp, **kw)
            out = gshard_experts(x, dispatch, combine, w, act)
            dy = torch.tensor(rng.normal(size=(G, S, M)), dtype=dt)
            config = dict(kind="gshard", activation=act, capacity=kw["capacity"],
                          normalize=kw.get("normalize", "before"), policy=kw.get("policy", "all"),
                          threshold=kw.get("threshold", 0.2), second_place_loss=int(kw.get("second_place_loss", False)))
            finish(f"gshard_{name}_{tag}", x, w, dy, out, aux, torch.zeros((), dtype=dt), (0.6, 0.0), config, extra)


def flaxformer_cases(rng):
    G, S, M, H, E = 2, 8, 5, 6, 4
    for dt, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        for name in ("tokens_choose", "tokens_choose_bpr", "experts_choose"):
            x = leaf(rng, (G, S, M), dt)
            w = dict(wg=leaf(rng, (M, E), dt, 0.8), wi=leaf(rng, (E, M, H), dt, 0.5), wo=leaf(rng, (E, H, M), dt, 0.5),
                     wi_gate=leaf(rng, (E, M, H), dt, 0.5))
            logits = torch.einsum("gsm,me->gse", x, w["wg"])
            if name == "experts_choose":
                C = 3
                combine, dispatch, z = flaxformer_experts_choose(logits, C)
                aux = torch.zeros((), dtype=dt)
                config = dict(kind="flaxformer", router="expert-choice", capacity=C, activation="silu")
            else:
                C, k = 3, 2
                combine, dispatch, aux, z = flaxformer_tokens_choose(logits, k, C, name.endswith("bpr"))
                config = dict(kind="flaxformer", router="topk", k=k, capacity=C,
                              priority="bpr" if name.endswith("bpr") else "choice", activation="silu")
            out = gshard_experts(x, dispatch, combine, w, "silu")
            dy = torch.tensor(rng.normal(size=(G, S, M)), dtype=dt)
            finish(f"flaxformer_{name}_{tag}", x, w, dy, out, aux, z, (0.4, 0.05), config)


def hf_cases(rng):
    T, M, H, E, Hs = 9, 6, 5, 6, 7
    for dt, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        for model in ("mixtral", "qwen2_moe", "deepseek_v3"):
            x = leaf(rng, (T, M), dt)
            gate = leaf(rng, (E, M), dt, 0.5)  # HF layouts [out, in]
            w1, w3 = leaf(rng, (E, H, M), dt, 0.4), leaf(rng, (E, H, M), dt, 0.4)
            w2 = leaf(rng, (E, M, H), dt, 0.4)
            logits = x @ gate.T
            probs = torch.softmax(logits, -1)
            if model == "mixtral":
                wts, sel = hf_topk_softmax(logits, 2, True)
                config = dict(k=2, score="softmax", normalize="topk")
                scores = probs
            elif model == "qwen2_moe":
                wts, sel = hf_topk_softmax(logits, 2, False)
                config = dict(k=2, score="softmax", normalize="none")
                scores = probs
            else:
                bias = torch.tensor(0.3 * rng.normal(size=E), dtype=dt)
                wts, sel = hf_deepseek_v3_router(logits, bias, 2, 3, 2, 2.5)
                config = dict(k=2, score="sigmoid", normalize="topk", groups=3, topk_groups=2, scale=2.5)
                s = torch.sigmoid(logits)
                scores = s / s.sum(-1, keepdim=True)
            out = hf_experts(x, wts, sel, w1, w3, w2, "silu")
            w = dict(wg_hf=gate, w1=w1, w3=w3, w2=w2)
            if model != "mixtral":
                sg, su, sd = leaf(rng, (Hs, M), dt, 0.4), leaf(rng, (Hs, M), dt, 0.4), leaf(rng, (M, Hs), dt, 0.4)
                shared = hf_mlp(x, sg, su, sd, "silu")
                w.update(sg=sg, su=su, sd=sd)
                if model == "qwen2_moe":
                    sgate = leaf(rng, (1, M), dt, 0.5)
                    shared = torch.sigmoid(x @ sgate.T) * shared
                    w["sgate"] = sgate
                out = out + shared
            # the losses on the scores (one group: all T tokens)
            aux = flaxformer_load_balancing_loss(scores[None], sel[None])
            z = flaxformer_z_loss(logits[None])
            dy = torch.tensor(rng.normal(size=(T, M)), dtype=dt)
            L = torch.sum(out * dy) + 0.3 * aux + 0.02 * z
            L.backward()
            # einmoe's layout
            t = lambda v: v.detach().transpose(-1, -2)  # noqa: E731
            arrays = dict(x=x, dy=dy, outputs=out, aux_loss=aux, z_loss=z, grad_inputs=x.grad,
                          wg=t(gate), grad_wg=t(gate.grad), wi=t(w3), grad_wi=t(w3.grad), wi_gate=t(w1),
                          grad_wi_gate=t(w1.grad), wo=t(w2), grad_wo=t(w2.grad))
            if model == "deepseek_v3":
                arrays["bias"] = bias
            if "sg" in w:
                arrays.update(shared_wi=t(su), grad_shared_wi=t(su.grad), shared_wi_gate=t(sg),
                              grad_shared_wi_gate=t(sg.grad), shared_wo=t(sd), grad_shared_wo=t(sd.grad))
            if "sgate" in w:
                arrays.update(shared_gate=sgate.detach()[0], grad_shared_gate=sgate.grad[0])
            write_case(f"hf_{model}_{tag}", arrays,
                       dict(kind="hf", model_type=model, activation="silu", aux_coef=0.3, z_coef=0.02, **config))


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(20261207)
    gshard_cases(rng)
    flaxformer_cases(rng)
    hf_cases(rng)
    print("wrote", len(os.listdir(OUT)), "cases to", os.path.relpath(OUT))


if __name__ == "__main__":
    main()
