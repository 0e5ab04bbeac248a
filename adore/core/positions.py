"""Cache-relative positions with key re-rotation, as a wrapper any policy can take.

StreamingLLM's finding: with RoPE, a window that drops old tokens works when positions are given
*within the cache* (the query sits at the cache length, each kept key at its rank), not in the
original text. ``CacheRelativePositions(policy)`` gives any policy that mode (kvpress's
``KeyRerotationPress`` plays the same role): every hook is the inner policy's, except the positions
RoPE sees for new tokens and the keys the queries attend to, which are re-rotated to their ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .cache import PolicyCache, PolicyLayer
    from .policy import KVPolicy

_EXTRA = "rope_pos"  # per slot: the position RoPE rotated its key at


class CacheRelativePositions:
    """Wraps a :class:`~adore.core.policy.KVPolicy`; everything not defined here is the inner policy's."""

    #: The engine measures each layer's rotation (:func:`~adore.core.rope.layer_rotations`) and refuses
    #: a model whose keys cannot be re-rotated exactly.
    rerotates_keys = True

    def __init__(self, inner: KVPolicy):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"CacheRelativePositions({self.inner!r})"

    def composed(self) -> CacheRelativePositions:
        return self

    def rope_position_ids(self, cache: PolicyCache, position_ids: torch.Tensor) -> torch.Tensor:
        """New tokens continue from the number of valid tokens the cache holds (``[B, q]``)."""
        layer = cache.layers[0]
        stored_valid = (
            layer.valid[:, 0].sum(-1) if layer.is_initialized else position_ids.new_zeros(position_ids.shape[0])
        )
        return stored_valid[:, None] + (position_ids - position_ids[:, :1])

    def on_append(self, layer: PolicyLayer, q: int) -> None:
        self.inner.on_append(layer, q)
        B, H = layer.positions.shape[:2]
        rope = layer.step_rope_positions.to(layer.positions.device).expand(B, q)[:, None].expand(B, H, q)
        layer.grow_extra(_EXTRA, q, rope.dtype)[:, :, -q:] = rope

    def keys_for_attention(self, layer: PolicyLayer, keys: torch.Tensor) -> torch.Tensor:
        keys = self.inner.keys_for_attention(layer, keys)
        # Rank of each valid slot by original position; pads sort first and are masked anyway.
        order_key = layer.positions.masked_fill(~layer.valid, -1)
        rank = order_key.argsort(dim=-1).argsort(dim=-1) - (~layer.valid).sum(-1, keepdim=True)
        delta = rank - layer.extras[_EXTRA]
        if not bool(delta.any()):
            return keys
        rotations = layer.owner.rotations
        if rotations is None:
            raise RuntimeError(
                "cache-relative positions need the cache's per-layer rotations (DecodingEngine sets them)"
            )
        return rotations[layer.layer_idx].rotate(keys, delta)
