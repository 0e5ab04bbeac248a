"""StreamingLLM (Xiao et al., ICLR 2024): attention sinks plus a window of recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore.cache import PolicyCache, PolicyLayer
from adore.errors import ConfigError
from adore.policy import KVPolicy
from adore.registry import register_method
from adore.rope import rerotate

_SINK_BONUS = float(2**40)  # above any position, so sinks always outrank recent tokens


@register_method("streaming_llm")
@dataclass
class StreamingLLM(KVPolicy):
    """Keeps the first ``n_sink`` tokens and the ``m - n_sink`` most recent ones.

    Attributes:
        n_sink: attention-sink tokens (the first real tokens of each sequence).
        position_mode: ``"cache"`` gives RoPE positions within the cache (the paper's choice:
            the query sits at the cache length and each kept key is re-rotated to its rank);
            ``"original"`` keeps every token's original position.
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

    def priority(self, layer: PolicyLayer) -> torch.Tensor:
        sink = layer.valid & (layer.positions < self.n_sink)
        return layer.positions.to(torch.float64) + sink * _SINK_BONUS

    # ---- cache-relative positions ------------------------------------------------------
    def rope_position_ids(self, cache: PolicyCache, position_ids: torch.Tensor) -> torch.Tensor:
        if self.position_mode == "original":
            return position_ids
        layer = cache.layers[0]
        stored_valid = (
            layer.valid[:, 0].sum(-1) if layer.is_initialized else position_ids.new_zeros(position_ids.shape[0])
        )
        return stored_valid[:, None] + (position_ids - position_ids[:, :1])

    def on_append(self, layer: PolicyLayer, q: int) -> None:
        if self.position_mode == "original":
            return
        B, H = layer.positions.shape[:2]
        rope = layer.step_rope_positions.to(layer.positions.device).expand(B, q)[:, None].expand(B, H, q)
        previous = layer.extras.get("rope_pos", rope.new_zeros(B, H, 0))
        layer.extras["rope_pos"] = torch.cat([previous, rope], dim=2)

    def keys_for_attention(self, layer: PolicyLayer, keys: torch.Tensor) -> torch.Tensor:
        if self.position_mode == "original":
            return keys
        # Rank of each valid slot by original position; pads sort first and are masked anyway.
        order_key = layer.positions.masked_fill(~layer.valid, -1)
        rank = order_key.argsort(dim=-1).argsort(dim=-1) - (~layer.valid).sum(-1, keepdim=True)
        delta = rank - layer.extras["rope_pos"]
        if not bool(delta.any()):
            return keys
        return rerotate(keys, delta, layer.owner.rotary_inv_freq)
