#!/usr/bin/env python3
"""Today's routers and MoE blocks in numpy, transcribed from their sources.

Dev-time only: writes the golden fixtures in tests/fixtures/routers/ that the
C++ tests (tests/test_router_fixtures.cpp) reproduce. The test suite never
runs Python.

    python3 scripts/reference_routers.py        # rewrite the fixtures

Sources (each function says which function it transcribes; torch / jax ops
are written as the numpy ops with the same semantics):
  - Hugging Face transformers: MixtralSparseMoeBlock (modeling_mixtral.py),
    Qwen2MoeSparseMoeBlock (modeling_qwen2_moe.py), DeepseekV3TopkRouter and
    DeepseekV3MoE (modeling_deepseek_v3.py), SwitchTransformersTop1Router and
    router_z_loss_func (modeling_switch_transformers.py)
  - flaxformer (architectures/moe/routing.py): TokensChooseMaskedRouter
    (with and without batch_prioritized_routing), ExpertsChooseMaskedRouter,
    _load_balancing_loss, _router_z_loss
  - DeepSpeed (deepspeed/moe/sharded_moe.py): topkgating with
    drop_policy="position"
  - DeepSeek-V3's own inference code (inference/model.py): Gate.forward,
    whose group-limited routing fills unchosen groups with -inf where
    Hugging Face fills them with 0.0

Each case directory holds its inputs, a config.txt (key value per line) and
the expected outputs. Routers write combine [G,S,E] (the token's weight for
the expert, 0 where not routed) and slot [G,S,E] (int64, the position in the
expert's buffer within the group, -1 where not routed), as `einmoe route`
does; blocks write outputs [T,M] and router_logits [T,E].
"""
import os
import shutil

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "routers")


# ---------------------------------------------------------------- helpers

def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def logsumexp(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)))[..., 0]


def topk(x, k):
    """torch.topk / jax.lax.top_k along the last axis: values, indices,
    largest first, equal values by lower index (a stable sort)."""
    idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, idx, -1), idx


def one_hot(idx, n, dtype):
    out = np.zeros(idx.shape + (n,), dtype)
    valid = (idx >= 0) & (idx < n)
    np.put_along_axis(out, np.where(valid, idx, 0)[..., None], valid[..., None].astype(dtype), axis=-1)
    return out


def act(name, x):
    if name == "silu":
        return x * sigmoid(x)
    if name == "relu":
        return np.maximum(x, 0)
    raise ValueError(name)


def linear(x, w):
    """torch nn.Linear without bias: x @ w.T, w [out, in]."""
    return x @ w.T


def mlp(x, gate_proj, up_proj, down_proj, hidden_act):
    """HF MixtralBlockSparseTop2MLP / Qwen2MoeMLP / DeepseekV3MLP:
    down(act(gate(x)) * up(x))."""
    return linear(act(hidden_act, linear(x, gate_proj)) * linear(x, up_proj), down_proj)


def plan_to_combine_slot(weights, experts, slots, E):
    """Per-token lists (k choices) -> combine, slot [S, E]."""
    S = weights.shape[0]
    combine = np.zeros((S, E), weights.dtype)
    slot = np.full((S, E), -1, np.int64)
    for t in range(S):
        for j in range(weights.shape[1]):
            if experts[t, j] >= 0 and slots[t, j] >= 0:
                combine[t, experts[t, j]] = weights[t, j]
                slot[t, experts[t, j]] = slots[t, j]
    return combine, slot


def dense_to_combine_slot(combine_gsec, dispatch_gsec):
    """[G, S, E, C] combine / dispatch -> combine, slot [G, S, E]."""
    G, S, E, C = combine_gsec.shape
    combine = np.sum(combine_gsec * dispatch_gsec, axis=-1)
    slot = np.where(np.any(dispatch_gsec > 0, axis=-1), np.argmax(dispatch_gsec, axis=-1), -1).astype(np.int64)
    return combine.astype(combine_gsec.dtype), slot


# ------------------------------------------------------------ flaxformer

def flaxformer_load_balancing_loss(router_probs, expert_indices):
    """flaxformer routing._load_balancing_loss: probs [G,S,E], indices [G,S,k]."""
    num_experts = router_probs.shape[-1]
    expert_mask = one_hot(expert_indices, num_experts, np.int32)
    expert_mask = np.max(expert_mask, axis=-2)
    tokens_per_group_and_expert = np.mean(expert_mask, axis=-2)
    router_prob_per_group_and_expert = np.mean(router_probs, axis=-2)
    return np.mean(tokens_per_group_and_expert * router_prob_per_group_and_expert) * num_experts ** 2


def flaxformer_z_loss(router_logits):
    """flaxformer routing._router_z_loss."""
    num_groups, tokens_per_group, _ = router_logits.shape
    log_z = logsumexp(router_logits, axis=-1)
    return np.sum(log_z ** 2) / (num_groups * tokens_per_group)


def flaxformer_tokens_choose(router_logits, k, expert_capacity, batch_prioritized_routing):
    """flaxformer TokensChooseMaskedRouter._compute_routing_instructions
    (router_probs = softmax(router_logits), no padding mask)."""
    router_probs = softmax(router_logits)
    num_groups, tokens_per_group, num_experts = router_probs.shape
    expert_gate, expert_index = topk(router_probs, k)
    auxiliary_loss = flaxformer_load_balancing_loss(router_probs, expert_index)
    if batch_prioritized_routing:
        # jnp.argsort is stable: equal top-1 probabilities keep token order
        permutation = np.argsort(-expert_gate[..., 0], axis=-1, kind="stable")
        expert_index = np.take_along_axis(expert_index, permutation[..., None], axis=-2)
    expert_index = np.swapaxes(expert_index, 1, 2)
    expert_index = expert_index.reshape(num_groups, -1)
    expert_mask = one_hot(expert_index, num_experts, np.int32)
    token_priority = np.cumsum(expert_mask, axis=1) * expert_mask - 1
    token_priority = token_priority.reshape((num_groups, k, -1, num_experts))
    token_priority = np.swapaxes(token_priority, 1, 2)
    token_priority = np.max(token_priority, axis=2)
    if batch_prioritized_routing:
        inv_permutation = np.argsort(permutation, axis=-1, kind="stable")
        token_priority = np.take_along_axis(token_priority, inv_permutation[..., None], axis=-2)
    dispatch_mask = one_hot(token_priority, expert_capacity, router_probs.dtype)
    combine_array = np.einsum("...te,...tec->...tec", router_probs, dispatch_mask)
    return combine_array, dispatch_mask, auxiliary_loss, flaxformer_z_loss(router_logits)


def flaxformer_experts_choose(router_logits, expert_capacity):
    """flaxformer ExpertsChooseMaskedRouter._compute_routing_instructions."""
    router_probs = softmax(router_logits)
    tokens_per_group = router_probs.shape[1]
    router_probs_t = np.swapaxes(router_probs, 1, 2)
    expert_gate, expert_index = topk(router_probs_t, expert_capacity)  # [G, E, C]
    dispatch_mask = one_hot(expert_index, tokens_per_group, router_probs.dtype)  # [G, E, C, T]
    dispatch_mask = np.moveaxis(dispatch_mask, 3, 1)  # [G, T, E, C]
    combine_array = np.einsum("...ec,...tec->...tec", expert_gate, dispatch_mask)
    return combine_array, dispatch_mask, 0.0, flaxformer_z_loss(router_logits)


# --------------------------------------------------------------- DeepSpeed

def deepspeed_topkgating_position(logits, k, capacity):
    """DeepSpeed sharded_moe.topkgating(drop_tokens=True, drop_policy="position")
    for one group: logits [S, E] -> l_aux, combine_weights [S, E, C], dispatch."""
    top_gate, top_idx = topk(logits, k)
    gates = softmax(logits, axis=1)
    num_experts = gates.shape[1]
    mask = np.zeros(gates.shape, bool)
    np.put_along_axis(mask, top_idx, True, axis=1)
    me = np.mean(gates, axis=0)
    ce = np.mean(mask.astype(gates.dtype), axis=0)
    l_aux = np.mean(me * ce) * num_experts * num_experts / k
    locations = np.cumsum(mask, axis=0) - 1
    mask = mask & (locations < capacity)
    gates_masked = gates * mask
    gates_s = np.sum(gates_masked, axis=-1, keepdims=True)
    denom_s = np.maximum(gates_s, np.finfo(gates_masked.dtype).eps)
    gates_masked = gates_masked / denom_s
    locations_sc = one_hot(locations * mask, capacity, gates.dtype)
    combine_weights = np.einsum("se,sec->sec", gates_masked, locations_sc)
    dispatch_mask = combine_weights != 0
    return l_aux, combine_weights, dispatch_mask


# ---------------------------------------------------------- Hugging Face

def hf_switch_top1(router_logits, expert_capacity):
    """SwitchTransformersTop1Router._compute_router_probabilities and forward
    (eval: no jitter), router_logits [B, S, E]: every batch row is a group.
    Returns combine, slot [B, S, E] and router_z_loss_func's z loss."""
    router_probs = softmax(router_logits)
    num_experts = router_logits.shape[-1]
    expert_index = np.argmax(router_probs, axis=-1)
    expert_index = one_hot(expert_index, num_experts, np.int64)
    token_priority = np.cumsum(expert_index, axis=-2)
    expert_capacity_mask = token_priority <= expert_capacity
    expert_index = expert_index * expert_capacity_mask
    router_probs_max = np.max(router_probs, axis=-1, keepdims=True)
    combine = (expert_index * router_probs_max).astype(router_logits.dtype)
    slot = np.where(expert_index > 0, token_priority - 1, -1).astype(np.int64)
    # router_z_loss_func
    num_groups, tokens_per_group, _ = router_logits.shape
    log_z = logsumexp(router_logits, axis=-1)
    z_loss = np.sum(log_z ** 2) / (num_groups * tokens_per_group)
    return combine, slot, z_loss


def hf_topk_softmax_router(router_logits, top_k, norm_topk_prob):
    """MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock routing: softmax over
    experts (in float), topk, optional renormalization."""
    routing_weights = softmax(router_logits, axis=1)
    routing_weights, selected_experts = topk(routing_weights, top_k)
    if norm_topk_prob:
        routing_weights /= np.sum(routing_weights, axis=-1, keepdims=True)
    return routing_weights, selected_experts


def hf_deepseek_v3_router(router_logits, bias, top_k, n_group, topk_group, norm_topk_prob, routed_scaling_factor):
    """DeepseekV3TopkRouter.get_topk_indices and forward."""
    n_routed_experts = router_logits.shape[-1]
    scores = sigmoid(router_logits)
    scores_for_choice = scores.reshape(-1, n_routed_experts) + bias[None, :]
    group_scores = np.sum(topk(scores_for_choice.reshape(-1, n_group, n_routed_experts // n_group), 2)[0], axis=-1)
    group_idx = topk(group_scores, topk_group)[1]
    group_mask = np.zeros_like(group_scores)
    np.put_along_axis(group_mask, group_idx, 1, axis=1)
    score_mask = np.broadcast_to(group_mask[..., None], group_mask.shape + (n_routed_experts // n_group,))
    score_mask = score_mask.reshape(-1, n_routed_experts)
    scores_for_choice = np.where(score_mask.astype(bool), scores_for_choice, 0.0)
    topk_indices = topk(scores_for_choice, top_k)[1]
    topk_weights = np.take_along_axis(scores, topk_indices, 1)
    if norm_topk_prob:
        denominator = np.sum(topk_weights, axis=-1, keepdims=True) + 1e-20
        topk_weights = topk_weights / denominator
    topk_weights = topk_weights * routed_scaling_factor
    return topk_weights, topk_indices


def deepseek_inference_gate(router_logits, bias, top_k, n_groups, topk_groups, route_scale):
    """DeepSeek-V3 inference/model.py Gate.forward, score_func "sigmoid" with
    a bias: the experts of unchosen groups are masked with -inf."""
    scores = sigmoid(router_logits)
    original_scores = scores
    scores = scores + bias[None, :]
    if n_groups > 1:
        scores = scores.reshape(scores.shape[0], n_groups, -1)
        group_scores = np.sum(topk(scores, 2)[0], axis=-1)
        indices = topk(group_scores, topk_groups)[1]
        mask = np.ones(group_scores.shape, dtype=bool)
        np.put_along_axis(mask, indices, False, axis=1)
        scores = np.where(mask[..., None], -np.inf, scores).reshape(scores.shape[0], -1)
    indices = topk(scores, top_k)[1]
    weights = np.take_along_axis(original_scores, indices, 1)
    weights = weights / np.sum(weights, axis=-1, keepdims=True)
    weights = weights * route_scale
    return weights, indices


def hf_moe_experts(x, weights, selected, experts, hidden_act):
    """The experts loop of the HF blocks: per expert, its tokens, weighted,
    index_add into the output (experts = list of (gate, up, down))."""
    out = np.zeros_like(x)
    for e, (g, u, d) in enumerate(experts):
        token_idx, which = np.where(selected == e)
        if token_idx.size == 0:
            continue
        y = mlp(x[token_idx], g, u, d, hidden_act) * weights[token_idx, which][:, None]
        np.add.at(out, token_idx, y)
    return out


# ------------------------------------------------------------------ cases

def write_case(name, arrays, config):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for k, v in arrays.items():
        v = np.asarray(v)  # (np.ascontiguousarray would make 0-d arrays 1-d)
        np.save(os.path.join(d, k + ".npy"), v if v.ndim == 0 else np.ascontiguousarray(v))
    with open(os.path.join(d, "config.txt"), "w") as f:
        for k, v in config.items():
            f.write(f"{k} {v}\n")


def logits_with_ties(rng, shape, dt):
    """Random logits, with some exact ties (repeated values) in every group."""
    x = rng.normal(size=shape)
    x[..., 1, :] = x[..., 0, :]              # token 1 == token 0
    x[..., 2, 1] = x[..., 2, 0]              # two experts tied within a token
    return x.astype(dt)


def router_cases(rng):
    for dt, tag in ((np.float64, "f64"), (np.float32, "f32")):
        # flaxformer tokens-choose, choice and batch-prioritized
        for bpr in (False, True):
            for k, cap in ((1, 3), (2, 2), (2, 9)):
                logits = logits_with_ties(rng, (2, 8, 4), dt)
                c, d, aux, z = flaxformer_tokens_choose(logits, k, cap, bpr)
                comb, slot = dense_to_combine_slot(c, d)
                write_case(f"flax_tokens_{'bpr' if bpr else 'choice'}_k{k}_c{cap}_{tag}",
                           dict(logits=logits, combine=comb, slot=slot, aux_loss=np.array(aux, np.float64),
                                z_loss=np.array(z, np.float64)),
                           dict(kind="route", router="topk", k=k, score="softmax", normalize="none",
                                capacity=cap, priority="bpr" if bpr else "choice", source="flaxformer"))
        # flaxformer experts-choose
        for cap in (1, 3, 8):
            logits = logits_with_ties(rng, (2, 8, 4), dt)
            c, d, aux, z = flaxformer_experts_choose(logits, cap)
            comb, slot = dense_to_combine_slot(c, d)
            write_case(f"flax_experts_c{cap}_{tag}",
                       dict(logits=logits, combine=comb, slot=slot, aux_loss=np.array(aux, np.float64),
                            z_loss=np.array(z, np.float64)),
                       dict(kind="route", router="expert-choice", capacity=cap, source="flaxformer"))
        # DeepSpeed topkgating, drop_policy position (normalize over kept)
        for k, cf, min_cap in ((2, 1.0, 1), (1, 1.5, 2), (3, 0.5, 1)):
            logits = logits_with_ties(rng, (3, 10, 6), dt)
            S, E = logits.shape[1], logits.shape[2]
            capacity = max(int(np.ceil((S / E) * cf * k)), min_cap)  # sharded_moe._capacity
            combs, slots, auxes = [], [], []
            for g in range(logits.shape[0]):
                l_aux, cw, dm = deepspeed_topkgating_position(logits[g], k, capacity)
                comb, slot = dense_to_combine_slot(cw[None], dm[None].astype(dt))
                combs.append(comb[0]), slots.append(slot[0]), auxes.append(l_aux)
            write_case(f"deepspeed_position_k{k}_{tag}",
                       dict(logits=logits, combine=np.stack(combs), slot=np.stack(slots),
                            deepspeed_l_aux=np.array(auxes, np.float64)),
                       dict(kind="route", router="topk", k=k, score="softmax", normalize="kept", capacity=capacity,
                            priority="token", capacity_factor=cf, min_capacity=min_cap, source="deepspeed"))
        # HF Switch top-1 with capacity (every batch row a group)
        for cap in (2, 5):
            logits = logits_with_ties(rng, (2, 9, 4), dt)
            comb, slot, z = hf_switch_top1(logits, cap)
            write_case(f"hf_switch_c{cap}_{tag}",
                       dict(logits=logits, combine=comb, slot=slot, z_loss=np.array(z, np.float64)),
                       dict(kind="route", router="topk", k=1, score="softmax", normalize="none", capacity=cap,
                            priority="choice", source="switch_transformers"))
        # HF DeepSeek-V3 router (dropless), with groups and bias
        for n_group, topk_group, k, norm, scale in ((4, 2, 3, 1, 2.5), (1, 1, 2, 0, 1.0), (2, 1, 2, 1, 1.0)):
            logits = rng.normal(size=(1, 12, 8)).astype(dt)
            bias = (0.2 * rng.normal(size=8)).astype(dt)
            w, idx = hf_deepseek_v3_router(logits[0], bias, k, n_group, topk_group, norm, scale)
            comb = np.zeros((12, 8), dt)
            np.put_along_axis(comb, idx, w.astype(dt), axis=1)
            write_case(f"hf_deepseek_v3_g{n_group}_t{topk_group}_k{k}_{tag}",
                       dict(logits=logits, bias=bias, combine=comb[None]),
                       dict(kind="route", router="topk", k=k, score="sigmoid", normalize="topk" if norm else "none",
                            scale=scale, groups=n_group, topk_groups=topk_group, source="deepseek_v3"))


def block_cases(rng):
    T, M, H, E = 7, 6, 5, 4
    for dt, tag in ((np.float64, "f64"), (np.float32, "f32")):
        x = rng.normal(size=(T, M)).astype(dt)
        gate = (0.5 * rng.normal(size=(E, M))).astype(dt)               # [E, M]
        w1 = (0.4 * rng.normal(size=(E, H, M))).astype(dt)              # gate_proj [H, M] per expert
        w3 = (0.4 * rng.normal(size=(E, H, M))).astype(dt)              # up_proj
        w2 = (0.4 * rng.normal(size=(E, M, H))).astype(dt)              # down_proj [M, H]
        experts = [(w1[e], w3[e], w2[e]) for e in range(E)]
        # Mixtral: softmax, top-2, normalized
        logits = linear(x, gate)
        wts, sel = hf_topk_softmax_router(logits, 2, True)
        y = hf_moe_experts(x, wts.astype(dt), sel, experts, "silu")
        write_case(f"block_mixtral_{tag}", dict(x=x, gate=gate, w1=w1, w3=w3, w2=w2, outputs=y, router_logits=logits),
                   dict(kind="block", model_type="mixtral", k=2, normalize="topk", score="softmax", act="silu"))
        # Qwen2-MoE: softmax, top-2, not normalized, shared expert with gate
        Hs = 9
        sg = (0.4 * rng.normal(size=(Hs, M))).astype(dt)
        su = (0.4 * rng.normal(size=(Hs, M))).astype(dt)
        sd = (0.4 * rng.normal(size=(M, Hs))).astype(dt)
        sgate = (0.5 * rng.normal(size=(1, M))).astype(dt)              # shared_expert_gate [1, M]
        wts, sel = hf_topk_softmax_router(logits, 2, False)
        y = hf_moe_experts(x, wts.astype(dt), sel, experts, "silu")
        shared = mlp(x, sg, su, sd, "silu")
        shared = sigmoid(linear(x, sgate)) * shared
        y = y + shared
        write_case(f"block_qwen2_moe_{tag}",
                   dict(x=x, gate=gate, w1=w1, w3=w3, w2=w2, shared_gate_proj=sg, shared_up_proj=su,
                        shared_down_proj=sd, shared_expert_gate=sgate, outputs=y, router_logits=logits),
                   dict(kind="block", model_type="qwen2_moe", k=2, normalize="none", score="softmax", act="silu"))
        # DeepSeek-V3: sigmoid, bias, groups, normalized, scaled, shared experts
        bias = (0.3 * rng.normal(size=E)).astype(dt)
        wts, sel = hf_deepseek_v3_router(logits, bias, 2, 2, 1, True, 1.5)
        y = hf_moe_experts(x, wts.astype(dt), sel, experts, "silu") + mlp(x, sg, su, sd, "silu")
        write_case(f"block_deepseek_v3_{tag}",
                   dict(x=x, gate=gate, w1=w1, w3=w3, w2=w2, bias=bias, shared_gate_proj=sg, shared_up_proj=su,
                        shared_down_proj=sd, outputs=y, router_logits=logits),
                   dict(kind="block", model_type="deepseek_v3", k=2, normalize="topk", score="sigmoid", act="silu",
                        groups=2, topk_groups=1, scale=1.5))


def group_fill_cases(rng):
    """DeepSeek-V3 group-limited routing with bias-corrected scores below 0,
    where the two fills choose differently: Hugging Face's (0.0) and
    DeepSeek's inference code (-inf), on the same logits."""
    for dt, tag in ((np.float64, "f64"), (np.float32, "f32")):
        n_group, topk_group, k, scale = 4, 2, 3, 2.5
        logits = rng.normal(size=(1, 12, 8)).astype(dt)
        bias = (-1.0 + 0.2 * rng.normal(size=8)).astype(dt)
        picks = {}
        for fill, fn in (("zero", lambda: hf_deepseek_v3_router(logits[0], bias, k, n_group, topk_group, True, scale)),
                         ("neg-inf", lambda: deepseek_inference_gate(logits[0], bias, k, n_group, topk_group, scale))):
            w, idx = fn()
            picks[fill] = np.sort(idx, axis=-1)
            comb = np.zeros((12, 8), dt)
            np.put_along_axis(comb, idx, w.astype(dt), axis=1)
            name = "hf_deepseek_v3" if fill == "zero" else "deepseek_inference"
            write_case(f"{name}_negative_g{n_group}_t{topk_group}_k{k}_{tag}",
                       dict(logits=logits, bias=bias, combine=comb[None]),
                       dict(kind="route", router="topk", k=k, score="sigmoid", normalize="topk", scale=scale,
                            groups=n_group, topk_groups=topk_group, group_fill=fill,
                            source="deepseek_v3" if fill == "zero" else "deepseek_v3_inference"))
        assert np.any(picks["zero"] != picks["neg-inf"]), "the two group fills must choose differently here"


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    rng = np.random.default_rng(20261123)
    router_cases(rng)
    block_cases(rng)
    group_fill_cases(rng)
    print("wrote", len(os.listdir(OUT)), "cases to", os.path.relpath(OUT))


if __name__ == "__main__":
    main()
