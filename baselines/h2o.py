"""H2O, Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023), as its real-drop KV cache does it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import AttentionView, ConfigError, PolicyLayer, ScoredPolicy, register_method


@register_method("h2o")
@dataclass
class H2O(ScoredPolicy):
    """Keeps the most recent tokens plus the "heavy hitters" with the largest accumulated attention.

    Per layer and per KV head, every key accumulates the attention probability it receives from
    every query so far (prefill rows included, current step included before eviction). With
    grouped-query attention the probabilities of the query heads sharing a KV head are summed.
    Each step evicts down to ``m``: the ``m - heavy`` most recent tokens plus the ``heavy`` tokens
    of highest accumulated score among the rest, as FMInference/H2O's ``H2OKVCache_LayerWise``.
    The newest token is always kept, also at ``heavy_ratio=1``.

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

    def protected_recent(self) -> int:
        return self.m - self.heavy

    def on_append(self, layer: PolicyLayer, q: int) -> None:
        layer.grow_extra("score", q)

    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        layer.extras["score"] += attention.column_sums()

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        return layer.extras["score"]
