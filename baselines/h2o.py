"""H2O, Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023), as its real-drop KV cache does it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore.attention_view import AttentionView
from adore.cache import PolicyLayer
from adore.errors import ConfigError
from adore.policy import KVPolicy
from adore.registry import register_method


@register_method("h2o")
@dataclass
class H2O(KVPolicy):
    """Keeps the most recent tokens plus the "heavy hitters" with the largest accumulated attention.

    Per layer and per KV head, every key accumulates the attention probability it receives from
    every query so far (prefill rows included, current step included before eviction). With
    grouped-query attention the probabilities of the query heads sharing a KV head are summed.
    Each step evicts down to ``m``: the ``m - heavy`` most recent tokens plus the ``heavy`` tokens
    of highest accumulated score among the rest, as FMInference/H2O's ``H2OKVCache_LayerWise``.

    Attributes:
        heavy_ratio: share of ``m`` given to heavy hitters (the rest is the recent window).
    """

    m: int = 128
    heavy_ratio: float = 0.5

    needs_scores = True

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.heavy_ratio <= 1.0:
            raise ConfigError(f"method.heavy_ratio must be in [0, 1], got {self.heavy_ratio}")

    @property
    def heavy(self) -> int:
        return int(self.m * self.heavy_ratio)

    @property
    def recent(self) -> int:
        return self.m - self.heavy

    def on_append(self, layer: PolicyLayer, q: int) -> None:
        B, H = layer.positions.shape[:2]
        previous = layer.extras.get("score", layer.positions.new_zeros(B, H, 0, dtype=torch.float32))
        layer.extras["score"] = torch.cat([previous, previous.new_zeros(B, H, q)], dim=2)

    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        layer.extras["score"] += attention.column_sums()

    def priority(self, layer: PolicyLayer) -> torch.Tensor:
        newest = layer.positions.masked_fill(~layer.valid, -1).amax(dim=-1, keepdim=True)
        recent = layer.positions > newest - self.recent
        return layer.extras["score"].to(torch.float64).masked_fill(recent, float("inf"))
