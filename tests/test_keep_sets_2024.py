"""The 2024 baselines (TOVA, SnapKV, PyramidKV, Ada-KV, Quest) against plain references written here.

As in ``tests/test_keep_sets.py``: the same weights run with eager attention over a full
``DynamicCache``; evicted tokens are hidden per layer and KV head; each rule is applied with Python
lists and dicts to the probabilities that reference attention produced (key index == position).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from adore import DecodingEngine
from adore.methods import build_policy
from baselines.pyramidkv import pyramid_budgets
from tests.conftest import random_prompts, tiny_llama
from tests.test_keep_sets import ReferenceAttention

PROMPT_LEN, STEPS, M, N_LAYERS, N_KV, N_REP = 24, 24, 12, 2, 2, 2


def top(scores: dict[int, float], n: int) -> set[int]:
    """The ``n`` positions of highest score; equal scores keep the newer (the engine drops the oldest)."""
    return set(sorted(scores, key=lambda p: (scores[p], p), reverse=True)[:n])


class Tova:
    def __init__(self, m, per_layer=False):
        self.m, self.per_layer = m, per_layer

    def update(self, layer, generated, probs, rows, candidates):
        last = probs[:, -1]  # [Hq, K]
        out = {}
        for h, cands in candidates.items():
            heads = range(N_KV * N_REP) if self.per_layer else range(h * N_REP, (h + 1) * N_REP)
            if len(cands) <= self.m:
                out[h] = cands
                continue
            newest = max(cands)
            score = {p: sum(last[r, p].item() for r in heads) / len(heads) for p in cands - {newest}}
            out[h] = {newest} | top(score, self.m - 1)
        return out


class Snap:
    """SnapKV: window queries' attention summed, pooled over the tokens before the window, top per head."""

    def __init__(self, m, window, kernel, pooling="maxpool", interval=1, budgets=None):
        self.m, self.window, self.kernel, self.pooling, self.interval = m, window, kernel, pooling, interval
        self.budgets = budgets or [m] * N_LAYERS
        self.rows = {layer: [] for layer in range(N_LAYERS)}  # the latest `window` query rows [Hq, K]

    def pooled(self, values: list[float]) -> list[float]:
        half, out = self.kernel // 2, []
        for i in range(len(values)):
            near = [values[j] for j in range(i - half, i + half + 1) if 0 <= j < len(values)]
            out.append(max(near) if self.pooling == "maxpool" else sum(near) / self.kernel)
        return out

    def scores(self, layer, h, prefix):
        rows = self.rows[layer][-self.window :]
        per_head = []
        for r in range(h * N_REP, (h + 1) * N_REP):
            summed = [sum(row[r, p].item() for row in rows) for p in prefix]
            per_head.append(self.pooled(summed))
        return {p: sum(head[i] for head in per_head) / N_REP for i, p in enumerate(prefix)}

    def update(self, layer, generated, probs, rows, candidates):
        for i in range(probs.shape[1]):
            self.rows[layer].append(probs[:, i])
        keep_n = self.budgets[layer]
        due = generated == 0 or generated % self.interval == 0
        out = {}
        for h, cands in candidates.items():
            if not due or len(cands) <= keep_n:
                out[h] = cands
                continue
            ordered = sorted(cands)
            window, prefix = set(ordered[-self.window :]), ordered[: -self.window]
            out[h] = window | top(self.scores(layer, h, prefix), keep_n - self.window)
        return out


class Ada:
    """Ada-KV over TOVA: floor per head, then one top-(H*m) across the layer's heads."""

    def __init__(self, m, floor):
        self.m, self.floor = m, floor

    def update(self, layer, generated, probs, rows, candidates):
        if sum(len(c) for c in candidates.values()) <= N_KV * self.m:
            return candidates
        last, pool = probs[:, -1], {}
        for h, cands in candidates.items():
            newest = max(cands)
            score = {p: sum(last[r, p].item() for r in range(h * N_REP, (h + 1) * N_REP)) / N_REP for p in cands}
            score[newest] = math.inf
            for p in top(score, int(self.m * self.floor)):
                score[p] = math.inf
            pool.update({(h, p): s for p, s in score.items()})
        ranked = sorted(pool, key=lambda hp: (pool[hp], hp[1], -hp[0]), reverse=True)[: N_KV * self.m]
        return {h: {p for g, p in ranked if g == h} for h in candidates}


def reference_run(rule, prompt, steps):
    attention = ReferenceAttention()
    AttentionInterface.register("reference_masked", attention)
    AttentionMaskInterface.register("reference_masked", sdpa_mask)
    model = tiny_llama("reference_masked")
    cache = DynamicCache()
    keep = {(layer, h): set() for layer in range(N_LAYERS) for h in range(N_KV)}
    tokens, history = [], []
    ids, positions = torch.tensor([prompt]), list(range(len(prompt)))
    with torch.no_grad():
        for step in range(steps):
            out = model(input_ids=ids, position_ids=torch.tensor([positions]), cache=cache)
            for layer in range(N_LAYERS):
                candidates = {h: keep[layer, h] | set(positions) for h in range(N_KV)}
                kept = rule.update(layer, step, attention.probs[layer], positions, candidates)
                keep.update({(layer, h): kept[h] for h in range(N_KV)})
            history.append({key: sorted(v) for key, v in keep.items()})
            tokens.append(out.logits[0, -1].argmax().item())
            position = len(prompt) + step
            for layer in range(N_LAYERS):
                attention.visible[layer] = torch.tensor(
                    [[k in keep[layer, h] or k == position for k in range(position + 1)] for h in range(N_KV)]
                )
            ids, positions = torch.tensor([[tokens[-1]]]), [position]
    return tokens, history


def engine_run(policy, prompt, steps):
    engine = DecodingEngine(tiny_llama(), policy)
    cache = engine.new_cache()
    logits = engine.forward(cache, torch.tensor([prompt]), torch.arange(len(prompt))[None])
    tokens, history = [], []
    for step in range(steps):
        history.append(
            {
                (layer, h): sorted(
                    p for p, v in zip(cache.layers[layer].positions[0, h].tolist(), cache.layers[layer].valid[0, h], strict=False)
                    if v
                )
                for layer in range(N_LAYERS)
                for h in range(N_KV)
            }
        )  # fmt: skip
        token = logits[0, -1].argmax().item()
        tokens.append(token)
        logits = engine.forward(cache, torch.tensor([[token]]), torch.tensor([[len(prompt) + step]]))
    return tokens, history


def test_pyramid_budgets_average_m_and_shrink_with_depth():
    for m, window, beta, layers in [(128, 32, 20, 32), (64, 8, 5, 30), (12, 2, 4, 2), (50, 10, 3, 7)]:
        budgets = pyramid_budgets(m, window, beta, layers)
        assert sum(budgets) == m * layers
        assert budgets == sorted(budgets, reverse=True) and budgets[0] > m > budgets[-1]
        # the paper's linear shape: from 2a - a/beta down to a/beta beyond the window, a = m - window
        assert abs(budgets[-1] - window - (m - window) / beta) <= 1
        assert abs(budgets[0] - window - (2 * (m - window) - (m - window) / beta)) <= 1
    assert pyramid_budgets(12, 2, 4, 2) == [20, 4]


CASES = [
    ("tova", {}, lambda: Tova(M)),
    ("tova", {"heads": "layer"}, lambda: Tova(M, per_layer=True)),
    ("snapkv", {"window": 4, "kernel": 3}, lambda: Snap(M, 4, 3)),
    ("snapkv", {"window": 4, "kernel": 5, "pooling": "avgpool", "interval": 3}, lambda: Snap(M, 4, 5, "avgpool", 3)),
    ("pyramidkv", {"window": 2, "kernel": 3, "beta": 4}, lambda: Snap(M, 2, 3, budgets=[20, 4])),
    ("adakv", {"scorer": "tova", "floor": 0.25}, lambda: Ada(M, 0.25)),
]


@pytest.mark.parametrize(("name", "params", "rule"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_keep_sets_equal_reference(name, params, rule):
    prompt = random_prompts([PROMPT_LEN], seed=5)[0]
    policy = build_policy(name, m=M, **params)
    tokens, history = engine_run(policy, prompt, STEPS)
    ref_tokens, ref_history = reference_run(rule(), prompt, STEPS)
    for step, (ours, ref) in enumerate(zip(history, ref_history, strict=True)):
        assert ours == ref, f"step {step}"
    assert tokens == ref_tokens
    sizes = {key: {len(h[key]) for h in history} for key in history[0]}
    if name == "snapkv" and params.get("interval", 1) > 1:
        assert max(max(s) for s in sizes.values()) == M + params["interval"] - 1  # the slack is used
    if name == "pyramidkv":
        assert max(sizes[0, 0]) == 20 and max(sizes[1, 0]) == 4
    if name == "adakv":  # heads really hold different counts, and the layer H*m in all
        assert any(len(h[0, 0]) != len(h[0, 1]) for h in history)
        assert all(len(h[0, 0]) + len(h[0, 1]) == N_KV * M for h in history)
    if name != "tova" or params:
        return
    assert any(h[0, 0] != h[0, 1] for h in history)  # per-KV-head sets differ


class QuestReference(ReferenceAttention):
    """Eager attention where each decode query (layers >= skip) sees only its top pages by the min/max bound."""

    def __init__(self, budget, page_size, skip):
        super().__init__()
        self.pages, self.page_size, self.skip = max(3, budget // page_size), page_size, skip

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        q, k = query.shape[2], key.shape[2]
        if q == 1 and module.layer_idx >= self.skip:
            visible = torch.zeros(query.shape[1], k, dtype=torch.bool)
            for r in range(query.shape[1]):
                keys, qv = key[0, r // N_REP], query[0, r, 0]
                bounds = {}
                for page in range((k - 1) // self.page_size + 1):
                    block = keys[page * self.page_size : (page + 1) * self.page_size]
                    hi, lo = block.max(dim=0).values, block.min(dim=0).values
                    bounds[page] = sum(max(qv[d] * hi[d], qv[d] * lo[d]).item() for d in range(len(qv)))
                chosen = sorted(bounds, key=lambda p: (-bounds[p], p))[: self.pages]
                for page in chosen:
                    visible[r, page * self.page_size : (page + 1) * self.page_size] = True
            logits = (query @ key.repeat_interleave(N_REP, 1).transpose(-1, -2)) * scaling
            probs = logits.masked_fill(~visible[None, :, None, :], float("-inf")).softmax(-1)
            return (probs @ value.repeat_interleave(N_REP, 1)).transpose(1, 2), None
        return super().__call__(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def test_quest_equals_reference_and_reads_fewer_keys():
    prompt = random_prompts([40], seed=5)[0]
    params = {"K": 12, "page_size": 4, "skip_layers": 1}
    policy = build_policy("quest", **params)
    engine = DecodingEngine(tiny_llama(), policy)
    tokens = engine.generate([prompt], STEPS).tokens[0]
    full = DecodingEngine(tiny_llama(), build_policy("full")).generate([prompt], STEPS).tokens[0]

    reference = QuestReference(12, 4, 1)
    AttentionInterface.register("reference_quest", reference)
    AttentionMaskInterface.register("reference_quest", sdpa_mask)
    model = tiny_llama("reference_quest")
    ref = model.generate(
        torch.tensor([prompt]), max_new_tokens=STEPS, do_sample=False, cache=DynamicCache(), eos_token_id=None
    )
    assert tokens == ref[0, len(prompt) :].tolist()
    assert tokens != full  # 3 pages of 4 out of 10+ pages: the sparsity changes the tokens
    assert policy.describe()["m"] is None  # nothing evicted: its KV bytes are full's
