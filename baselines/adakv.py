"""Ada-KV (Feng et al., 2024: "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for
Efficient LLM Inference"): per-head budgets from one top-k across the heads of a layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from adore import METHODS, AttentionView, ConfigError, KVPolicy, PolicyLayer, ScoredPolicy, register_method


@register_method("adakv")
@dataclass
class AdaKV(KVPolicy):
    """Wraps a scoring method (``scorer``, SnapKV by default: Ada-SnapKV) and lets its KV heads share
    the layer's budget ``H * m``.

    FFY0/AdaKV and kvpress's ``AdaKVPress``: each head first keeps its ``int(m * floor)`` best slots
    (the safeguard), then one top-``H*m`` over the scores of every head of the layer picks the rest,
    so a head whose attention is concentrated keeps fewer slots and a diffuse one more. The scorer's
    own protections (the newest token, SnapKV's window) stay in every head. Re-selected every step
    once a sequence holds more than ``H * m`` slots in a layer.

    Memory is real: the layer stores the widest head's count of slots and marks the narrower heads'
    extra slots dropped (masked in attention, evicted first next time), so the reported KV bytes are
    those held, padding included, never the logical ``H * m``. The engine asserts that no sequence
    holds more than ``H * m`` live slots in a layer. With grouped-query attention the unit is the KV
    head (its scorer averages the query heads that share it).

    Attributes:
        scorer: a registered :class:`~adore.ScoredPolicy` method (``snapkv``, ``tova``, ``h2o``, ``knorm``...).
        floor: share of ``m`` every head keeps whatever the others score (kvpress's ``alpha_safeguard``).
        scorer_params: the scorer's own parameters (its ``m`` is this ``m``; its ``interval`` must be 1).
    """

    m: int = 128
    scorer: str = "snapkv"
    floor: float = 0.2
    scorer_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.floor <= 1.0:
            raise ConfigError(f"method.floor must be in [0, 1], got {self.floor}")
        if self.scorer not in METHODS or not issubclass(METHODS.get(self.scorer), ScoredPolicy):
            scored = sorted(n for n, c in METHODS.items() if issubclass(c, ScoredPolicy) and n != "adakv")
            raise ConfigError(f"method.scorer must be a scoring method ({', '.join(scored)}), got {self.scorer!r}")
        params = dict(self.scorer_params or {})
        if params.get("interval", 1) != 1:
            raise ConfigError("adakv re-selects every step: method.scorer_params.interval must be 1")
        params.pop("m", None)
        self.inner: ScoredPolicy = METHODS.get(self.scorer)(m=self.m, **params)

    @property
    def needs_scores(self) -> bool:  # type: ignore[override]
        return self.inner.needs_scores

    def describe(self) -> dict:
        return {"m": self.m, "scorer": self.scorer, "floor": self.floor, "scorer_params": dict(self.scorer_params)}

    def on_append(self, layer: PolicyLayer, q: int) -> None:
        self.inner.on_append(layer, q)

    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        self.inner.observe(layer, attention)

    def live(self, layer: PolicyLayer) -> torch.Tensor:
        """``[B]`` live (valid) slots per sequence, over every KV head of ``layer``."""
        return layer.valid.sum(dim=(1, 2))

    def evicts_now(self, layer: PolicyLayer) -> bool:
        return bool((self.live(layer) > layer.valid.shape[1] * self.m).any())

    def budget_violation(self, layer: PolicyLayer) -> str | None:
        heads = layer.valid.shape[1]
        if int(self.live(layer).max()) > heads * self.m:
            return f"holds {int(self.live(layer).max())} > H*m={heads * self.m} live slots over its {heads} KV heads"
        return None

    def selection(self, layer: PolicyLayer) -> torch.Tensor:
        priority = self.inner.priority(layer).masked_fill(~layer.valid, float("-inf"))
        B, H, S = priority.shape
        safe = min(int(self.m * self.floor), S)
        if safe:
            newest_first = layer.positions.argsort(dim=-1, descending=True, stable=True)
            ranked = priority.gather(-1, newest_first).argsort(dim=-1, descending=True, stable=True)
            best = newest_first.gather(-1, ranked[..., :safe])
            priority = priority.scatter(-1, best, float("inf")).masked_fill(~layer.valid, float("-inf"))
        flat, positions = priority.reshape(B, H * S), layer.positions.reshape(B, H * S)
        newest_first = positions.argsort(dim=-1, descending=True, stable=True)  # ties: the older goes
        ranked = flat.gather(-1, newest_first).argsort(dim=-1, descending=True, stable=True)
        chosen = newest_first.gather(-1, ranked[:, : min(H * self.m, H * S)])
        selected = torch.zeros(B, H * S, dtype=torch.bool, device=flat.device).scatter_(-1, chosen, True)
        return selected.reshape(B, H, S)
