"""Key-norm eviction (Devoto et al., EMNLP 2024: "A Simple and Effective L2 Norm-Based Strategy for
KV Cache Compression"): keys of low L2 norm draw high attention, so the highest-norm keys go first.

This file is also the README's "adding a method" example: a method whose rule is a score per slot
is a :class:`~adore.ScoredPolicy` with one ``score``; the base keeps the newest token, the cache
drops padding first, the engine asserts the budget, and the shared tests enrol it from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import PolicyLayer, ScoredPolicy, register_method


@register_method("knorm")
@dataclass
class KeyNorm(ScoredPolicy):
    """Keeps the ``m`` keys of lowest L2 norm, per layer and KV head (kvpress's ``KnormPress`` score,
    applied at every step instead of once after the prompt)."""

    m: int = 128

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        return -layer.keys.float().norm(dim=-1)  # [B, H, S]
