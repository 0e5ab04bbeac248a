"""The ``kv_policy`` attention function: the model's own attention, plus the callback that lets the cache evict.

Registered through transformers' public ``AttentionInterface`` (no monkeypatching, no per-model copy
of an attention forward). Most modeling files pass the same kwargs dict to ``cache.update`` and to
the attention function, so the cache layer publishes itself there (``kv_layer``); models that call
``Cache.update()`` without it (GPT-NeoX) are matched through :func:`~adore.core.pending.pending_layer`.

What the model's attention does beyond ``softmax(q k^T * scaling) v`` is honoured from what the
model passes to this function, per layer:

* ``sliding_window``: the layer attends only to keys with ``query_pos - key_pos < window``. The mask is
  built by the cache from each slot's *position*, never from slot indices (eviction reorders slots).
* ``softcap`` (Gemma 2): ``tanh(logits / softcap) * softcap`` before the mask; sdpa cannot, so these
  layers take the exact eager path below.
* ``s_aux`` (gpt-oss's learned sinks): one extra logit per query head in the softmax denominator
  whose probability is dropped; eager path as well.

Without a policy cache this function is plain sdpa (or the eager path for the two cases above).
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .errors import ConfigError
from .pending import pending_layer

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
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Shapes: query ``[B, Hq, q, D]``, key/value ``[B, H, K, D]``, attention_mask (the model's) bool
    ``[B, 1, q, K]`` or ``None``, s_aux ``[Hq]``.

    Returns ``([B, q, Hq, D], None)`` like every transformers attention function.
    """
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = kv_layer if kv_layer is not None else pending_layer(key)
    if layer is None:
        # No policy cache (plain use): the model's own mask is right, sliding window included.
        if softcap is not None or s_aux is not None:
            return eager_attention(query, key, value, attention_mask, scaling, softcap, s_aux), None
        with _backends(query):
            out, _ = sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        return out, None

    # With a policy cache the model's mask is index-based and wrong after eviction or with tracked
    # padding; the layer's mask, built from positions, replaces it (None: every key visible to a
    # single query, or plain causal order for a first multi-token feed).
    layer.check_window(module, sliding_window)
    mask = layer.attention_mask(sliding_window)  # [B, H|1, q, K] per KV head (or shared), or None
    policy = layer.policy
    plain = not policy.overrides_attention and softcap is None and s_aux is None
    if plain and query.shape[2] == 1 and query.shape[1] != key.shape[1]:
        # The common decode step: one query per sequence, grouped heads, no logit modifier.
        with _backends(query):
            out = _single_query_gqa(query, key, value, scaling, mask)
    else:
        if mask is not None and mask.shape[1] > 1:
            mask = mask.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # [B, Hq, q, K]
        if policy.overrides_attention:
            if mask is not None:
                mask = mask.expand(-1, query.shape[1], -1, -1)  # a mask shared by every head: as views
            modifiers = _modifiers(policy, module, softcap, s_aux)
            if "layer" in inspect.signature(policy.attend).parameters:
                modifiers["layer"] = layer  # a policy that reads the slots' positions (Quest's pages)
            out = policy.attend(module, query, key, value, mask, scaling, **modifiers)
        elif not plain:
            out = eager_attention(query, key, value, mask, scaling, softcap, s_aux)
        else:
            with _backends(query):
                out, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling)
    layer.after_attention(query, scaling, softcap=softcap, sinks=s_aux)
    return out, None


def _modifiers(policy, module: torch.nn.Module, softcap: float | None, sinks: torch.Tensor | None) -> dict:
    """The logit modifiers a policy that replaces attention must apply; refuses a policy that cannot."""
    given = {name: v for name, v in (("softcap", softcap), ("sinks", sinks)) if v is not None}
    accepted = inspect.signature(policy.attend).parameters
    missing = [name for name in given if name not in accepted]
    if missing:
        family = getattr(getattr(module, "config", None), "model_type", type(module).__name__)
        raise ConfigError(
            f"method {policy.method_name!r} replaces attention without {' and '.join(missing)}, which "
            f"model family {family!r} uses; it cannot run this model exactly"
        )
    return given


def visible_or_causal(mask: torch.Tensor | None, q: int, k: int, device: torch.device) -> torch.Tensor:
    """Bool ``[B|1, H|1, q, K]``: ``mask`` as True-means-visible, or index-causal (the queries are the last
    ``q`` of the ``K`` keys) when ``mask`` is ``None``."""
    if mask is None:
        rows = torch.arange(q, device=device)[:, None] + (k - q)
        return (torch.arange(k, device=device)[None, :] <= rows)[None, None]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min  # an additive float mask


def attention_logits(
    query: torch.Tensor, key: torch.Tensor, scaling: float, softcap: float | None = None
) -> torch.Tensor:
    """``[B, Hq, q, K]`` logits in ``query.dtype``, softcapped as Gemma 2's eager attention does
    (same order of operations). ``key`` ``[B, H, K, D]`` is shared by ``Hq // H`` query heads."""
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # repeat_kv's head order
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def grouped_logits(
    query: torch.Tensor, key: torch.Tensor, scaling: float, softcap: float | None = None
) -> torch.Tensor:
    """:func:`attention_logits` in float32 without a copy of the keys per query head: ``[B, Hq, q, K]``.

    The ``n_rep`` query heads of a KV head are read as extra query rows of that head (query head
    ``h`` reads KV head ``h // n_rep``, as ``repeat_kv`` orders them), one batched matmul per KV head.
    """
    B, Hq, q, D = query.shape
    H = key.shape[1]
    grouped = query.float().reshape(B, H, Hq // H, q, D)
    logits = torch.einsum("bhrqd,bhkd->bhrqk", grouped, key.float()).mul_(scaling).reshape(B, Hq, q, -1)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def grouped_values(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``probs`` ``[B, Hq, q, K]`` applied to ``value`` ``[B, H, K, D]`` shared by ``Hq // H`` query heads,
    without repeating the values: ``[B, q, Hq, D]``, the layout attention functions return."""
    B, Hq, q, K = probs.shape
    H = value.shape[1]
    grouped = probs.to(value.dtype).reshape(B, H, Hq // H, q, K)
    out = torch.einsum("bhrqk,bhkd->bhrqd", grouped, value).reshape(B, Hq, q, -1)
    return out.transpose(1, 2).contiguous()


def attention_probs(logits: torch.Tensor, visible: torch.Tensor, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of ``logits`` ``[B, Hq, q, K]`` over visible keys (bool, broadcastable), in ``logits.dtype``.

    Hidden keys get the dtype's most negative value, as the models' additive masks do (a row that
    sees nothing, a padding query, becomes uniform instead of NaN). With ``sinks`` ``[Hq]`` the
    softmax has one more logit per head whose probability is dropped (gpt-oss's eager attention).
    """
    logits = logits.masked_fill(~visible, torch.finfo(logits.dtype).min)
    if sinks is None:
        return torch.softmax(logits, dim=-1, dtype=torch.float32).to(logits.dtype)
    B, Hq, q, _ = logits.shape
    sink = sinks.to(logits.dtype).reshape(1, Hq, 1, 1).expand(B, Hq, q, 1)
    combined = torch.cat([logits, sink], dim=-1)
    combined = combined - combined.amax(dim=-1, keepdim=True)
    return torch.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1]


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact attention where sdpa cannot follow the model (softcapping, learned sinks).

    ``mask``: bool (True = visible) or additive float ``[B|1, Hq|1, q, K]``, or ``None`` for causal.
    Returns ``[B, q, Hq, D]``.
    """
    logits = attention_logits(query, key, scaling, softcap)
    visible = visible_or_causal(mask, query.shape[2], key.shape[2], query.device)
    probs = attention_probs(logits, visible, sinks).to(value.dtype)
    value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


def _single_query_gqa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One decode query with grouped-query attention: the ``n_rep`` query heads of a KV head become
    ``n_rep`` "query rows" of that head, so sdpa runs per KV head without ``enable_gqa`` (which falls
    back to the slow math kernel on some CUDA builds) or ``repeat_kv`` copies of keys, values or the
    mask (``[B, H, 1, K]`` bool, shared by the rows of a head)."""
    B, Hq, _, D = query.shape
    packed = query.reshape(B, key.shape[1], Hq // key.shape[1], D)  # q-head h -> kv-head h // n_rep
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(B, 1, Hq, value.shape[-1])


def register() -> str:
    """Register the function and its mask builder (idempotent); returns the implementation name."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, kv_policy_attention)
    # Required: an unknown implementation name gets no causal mask at all.
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
