"""Keep-sets after every step equal a plain reference written here, independently of the engine.

The reference runs the same weights with eager attention over a full ``DynamicCache``; evicted
tokens are hidden by a per-layer, per-KV-head visibility mask, and each method's rule is applied
with Python sets and dicts to the attention probabilities that reference attention produced.
"""

from __future__ import annotations

from collections import defaultdict, deque

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from adore import DecodingEngine
from adore.methods import build_policy
from tests.conftest import random_prompts, tiny_llama

PROMPT_LEN, STEPS, M = 24, 24, 12


class ReferenceAttention:
    """Eager attention; ``visible[layer]`` (``[H_kv, K]`` bool) hides evicted keys; keeps the probabilities."""

    def __init__(self):
        self.visible: dict[int, torch.Tensor] = {}
        self.probs: dict[int, torch.Tensor] = {}

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        n_rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1)
        q, k = query.shape[2], key.shape[2]
        logits = (query @ key.transpose(-1, -2)) * scaling
        visible = torch.ones(q, k, dtype=torch.bool).tril(k - q)[None, None]
        if module.layer_idx in self.visible:
            visible = visible & self.visible[module.layer_idx].repeat_interleave(n_rep, 0)[None, :, None, :]
        probs = logits.masked_fill(~visible, float("-inf")).softmax(-1)
        self.probs[module.layer_idx] = probs[0]  # [Hq, q, K]
        return (probs @ value).transpose(1, 2), None


# ---- the rules, written plainly ------------------------------------------------------------
class Window:
    def __init__(self, m):
        self.m = m

    def observe(self, layer, head, probs, visible):
        """probs ``[n_rep, rows, K]`` of one KV head's query heads; visible ``[rows, K]`` bool; key index == position."""

    def select(self, layer, head, candidates):
        return set(sorted(candidates)[-self.m :])


class Sinks(Window):
    def select(self, layer, head, candidates):
        sinks = {p for p in candidates if p < 4}
        return sinks | set(sorted(candidates - sinks)[-(self.m - len(sinks)) :])


class HeavyHitters(Window):
    def __init__(self, m):
        super().__init__(m)
        self.score = defaultdict(float)  # (layer, kv head, position) -> attention received so far

    def observe(self, layer, head, probs, visible):
        for position, mass in enumerate(probs.sum(dim=(0, 1)).tolist()):
            self.score[layer, head, position] += mass

    def select(self, layer, head, candidates):
        recent = set(sorted(candidates)[-(self.m - self.m // 2) :])
        rest = sorted(candidates - recent, key=lambda p: -self.score[layer, head, p])
        return recent | set(rest[: self.m // 2])


class PersistenceOfImportance(Window):
    """Scissorhands: how often a token got less than the average attention 1/t over the last w queries."""

    def __init__(self, m, window=32, drop=1):
        super().__init__(m)
        self.window, self.drop, self.recent = window, drop, m // 4
        self.history = defaultdict(lambda: deque(maxlen=self.window))  # (layer, head) -> sets of low keys

    def observe(self, layer, head, probs, visible):
        mean = probs.mean(dim=0)  # [rows, K]
        for row in range(mean.shape[0]):
            t = int(visible[row].sum())
            low = {k for k in range(mean.shape[1]) if visible[row, k] and mean[row, k] < 1.0 / t}
            self.history[layer, head].append(low)

    def select(self, layer, head, candidates):
        counts = {p: sum(p in low for low in self.history[layer, head]) for p in candidates}
        protected = set(sorted(candidates)[-self.recent :])
        order = sorted(candidates - protected, key=lambda p: (-counts[p], p))  # most often low first, then oldest
        return set(candidates) - set(order[: len(candidates) - (self.m + 1 - self.drop)])


def reference_run(rule, prompt, steps, n_layers=2, n_kv=2):
    """Decode with the rule applied outside the model; returns tokens and keep-sets before each step."""
    attention = ReferenceAttention()
    AttentionInterface.register("reference_masked", attention)
    AttentionMaskInterface.register("reference_masked", sdpa_mask)
    model = tiny_llama("reference_masked")
    cache = DynamicCache()
    keep = {(layer, h): set() for layer in range(n_layers) for h in range(n_kv)}
    tokens, history = [], []
    ids, positions = torch.tensor([prompt]), list(range(len(prompt)))
    with torch.no_grad():
        for step in range(steps):
            out = model(input_ids=ids, position_ids=torch.tensor([positions]), cache=cache)
            for layer in range(n_layers):
                probs = attention.probs[layer]  # [Hq, q, K]
                n_rep = probs.shape[0] // n_kv
                for h in range(n_kv):
                    visible = torch.tensor(
                        [[k <= qp and (k in keep[layer, h] or k in positions) for k in range(probs.shape[-1])]
                         for qp in positions]
                    )  # fmt: skip
                    rule.observe(layer, h, probs[h * n_rep : (h + 1) * n_rep], visible)
                    candidates = keep[layer, h] | set(positions)
                    keep[layer, h] = rule.select(layer, h, candidates) if len(candidates) > rule.m else candidates
            history.append({key: sorted(v) for key, v in keep.items()})
            tokens.append(out.logits[0, -1].argmax().item())
            position = len(prompt) + step
            for layer in range(n_layers):
                attention.visible[layer] = torch.tensor(
                    [[k in keep[layer, h] or k == position for k in range(position + 1)] for h in range(n_kv)]
                )
            ids, positions = torch.tensor([[tokens[-1]]]), [position]
    return tokens, history


def engine_run(policy, prompt, steps):
    model = tiny_llama()
    engine = DecodingEngine(model, policy)
    cache = engine.new_cache()
    logits = engine.forward(cache, torch.tensor([prompt]), torch.arange(len(prompt))[None])
    tokens, history = [], []
    for step in range(steps):
        history.append({(layer, h): cache.stored_positions(layer)[0][h] for layer in range(2) for h in range(2)})
        assert all(layer.stored <= policy.m for layer in cache.layers)
        token = logits[0, -1].argmax().item()
        tokens.append(token)
        logits = engine.forward(cache, torch.tensor([[token]]), torch.tensor([[len(prompt) + step]]))
    return tokens, history


@pytest.mark.parametrize(
    ("name", "params", "rule"),
    [
        ("window", {}, Window(M)),
        ("streaming_llm", {"position_mode": "original"}, Sinks(M)),
        ("h2o", {}, HeavyHitters(M)),
        ("kv_compression", {}, PersistenceOfImportance(M)),
        ("kv_compression", {"drop_amount": 3, "history_window": 4}, PersistenceOfImportance(M, window=4, drop=3)),
    ],
)
def test_keep_sets_equal_reference(name, params, rule):
    prompt = random_prompts([PROMPT_LEN], seed=5)[0]
    tokens, history = engine_run(build_policy(name, m=M, **params), prompt, STEPS)
    ref_tokens, ref_history = reference_run(rule, prompt, STEPS)
    assert tokens == ref_tokens
    for step, (ours, ref) in enumerate(zip(history, ref_history, strict=True)):
        assert ours == ref, f"step {step}"
    if name == "h2o":  # per-head keep-sets really differ, so the per-head gather is exercised
        assert any(h[(0, 0)] != h[(0, 1)] for h in history)


def test_streaming_llm_cache_positions_keep_the_same_tokens():
    """In cache mode the kept positions follow the same sink + recent rule (only RoPE positions change)."""
    prompt = random_prompts([PROMPT_LEN], seed=5)[0]
    _, history = engine_run(build_policy("streaming_llm", m=M, position_mode="cache"), prompt, STEPS)
    for step, keep in enumerate(history):
        newest = PROMPT_LEN - 1 + step
        expected = [0, 1, 2, 3, *range(newest - (M - 4) + 1, newest + 1)]
        assert all(positions == expected for positions in keep.values())
