"""Window attention: the ``m`` most recent tokens (the baseline of StreamingLLM and ADORE)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import PolicyLayer, ScoredPolicy, register_method


@register_method("window")
@dataclass
class WindowAttention(ScoredPolicy):
    """Keeps the ``m`` tokens with the latest positions, in every layer and head."""

    m: int = 128

    uniform = True

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        return layer.positions
