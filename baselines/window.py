"""Window attention: the ``m`` most recent tokens (the baseline of StreamingLLM and ADORE)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore.cache import PolicyLayer
from adore.policy import KVPolicy
from adore.registry import register_method


@register_method("window")
@dataclass
class WindowAttention(KVPolicy):
    """Keeps the ``m`` tokens with the latest positions, in every layer and head."""

    m: int = 128

    uniform = True

    def priority(self, layer: PolicyLayer) -> torch.Tensor:
        return layer.positions.to(torch.float64)
