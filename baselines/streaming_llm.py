"""StreamingLLM (Xiao et al., ICLR 2024): attention sinks plus a window of recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import CacheRelativePositions, ConfigError, KVPolicy, PolicyLayer, ScoredPolicy, register_method


@register_method("streaming_llm")
@dataclass
class StreamingLLM(ScoredPolicy):
    """Keeps the first ``n_sink`` tokens and the ``m - n_sink`` most recent ones.

    Attributes:
        n_sink: attention-sink tokens (the first real tokens of each sequence).
        position_mode: ``"cache"`` gives RoPE positions within the cache (the paper's choice:
            the query sits at the cache length and each kept key is re-rotated to its rank, see
            :class:`~adore.CacheRelativePositions`); ``"original"`` keeps every token's original position.
    """

    m: int = 128
    n_sink: int = 4
    position_mode: str = "cache"

    uniform = True

    def validate(self) -> None:
        super().validate()
        if self.n_sink < 0:
            raise ConfigError(f"method.n_sink must be >= 0, got {self.n_sink}")
        if self.m <= self.n_sink:
            raise ConfigError(
                f"method.m={self.m} must be larger than the {self.n_sink} sink tokens; raise method.m or lower method.n_sink"
            )
        if self.position_mode not in ("cache", "original"):
            raise ConfigError(f"method.position_mode must be 'cache' or 'original', got {self.position_mode!r}")

    def protected_sinks(self) -> int:
        return self.n_sink

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        return layer.positions

    def composed(self) -> KVPolicy:
        return CacheRelativePositions(self) if self.position_mode == "cache" else self
