"""The ``kv_policy`` attention function: sdpa, plus the callback that lets the cache evict.

Registered through transformers' public ``AttentionInterface`` (no monkeypatching). ``LlamaAttention``
passes the same kwargs dict to ``cache.update`` and to the attention function, so the cache layer
publishes itself (``kv_layer``) and, when needed, a per-layer, per-KV-head mask (``kv_mask``) there.
Without a policy cache this function is plain sdpa.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "kv_policy"


def kv_policy_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    kv_layer=None,
    kv_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Shapes: query ``[B, Hq, q, D]``, key/value ``[B, H, K, D]``, kv_mask ``[B, H, q, K]`` bool.

    Returns ``([B, q, Hq, D], None)`` like every transformers attention function.
    """
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if kv_mask is not None:
        attention_mask = kv_mask.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    policy = kv_layer.policy if kv_layer is not None else None
    if policy is not None and policy.overrides_attention:
        out = policy.attend(module, query, key, value, attention_mask, scaling)
    else:
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kv_layer is not None:
        kv_layer.after_attention(query, scaling)
    return out, None


def register() -> str:
    """Register the function and its mask builder (idempotent); returns the implementation name."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, kv_policy_attention)
    # Required: an unknown implementation name gets no causal mask at all.
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
