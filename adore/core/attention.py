"""The ``kv_policy`` attention function: sdpa, plus the callback that lets the cache evict.

Registered through transformers' public ``AttentionInterface`` (no monkeypatching). ``LlamaAttention``
passes the same kwargs dict to ``cache.update`` and to the attention function, so the cache layer
publishes itself (``kv_layer``) and, when needed, a per-layer, per-KV-head mask (``kv_mask``) there.
Without a policy cache this function is plain sdpa.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "kv_policy"
# cuDNN's attention builds an execution plan per key length; in decoding the length changes every
# step, which cost about 40 ms per step on an H200 (torch 2.11). Flash / memory-efficient kernels do not.
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _backends(query: torch.Tensor):
    return sdpa_kernel(_CUDA_BACKENDS) if query.is_cuda else nullcontext()


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
    elif query.shape[2] == 1 and attention_mask is None and query.shape[1] != key.shape[1]:
        with _backends(query):
            out = _single_query_gqa(query, key, value, scaling)
    else:
        with _backends(query):
            out, _ = sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
    if kv_layer is not None:
        kv_layer.after_attention(query, scaling)
    return out, None


def _single_query_gqa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """One decode query with grouped-query attention and no mask: the ``n_rep`` query heads of a KV
    head become ``n_rep`` "query rows" of that head, so sdpa runs per KV head without ``enable_gqa``
    (which falls back to the slow math kernel on some CUDA builds) or ``repeat_kv`` copies."""
    B, Hq, _, D = query.shape
    packed = query.reshape(B, key.shape[1], Hq // key.shape[1], D)  # q-head h -> kv-head h // n_rep
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, scale=scaling)
    return out.reshape(B, 1, Hq, value.shape[-1])


def register() -> str:
    """Register the function and its mask builder (idempotent); returns the implementation name."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, kv_policy_attention)
    # Required: an unknown implementation name gets no causal mask at all.
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
