"""Training labels for ADORE's controller: the ideal top-K set of every query.

The LLM runs with full attention, teacher-forced, over a training sequence. The attention
probabilities of every layer and query head are aggregated into one token-level matrix
``A [T, T]`` (mean over layers and heads by default, ``max`` as an option), because ADORE keeps one
token set for all layers. ``y_{t,i} = 1`` when ``i`` is among the ``K`` past tokens (``i < t``) of
highest ``A[t, i]``.

Cost: ``O(L * H * T^2)`` time, like the prefill itself, and ``O(T^2)`` memory for ``A``; the
probabilities are computed in chunks of query rows (``AttentionView``), so the per-layer ``[H, T, T]``
tensor is never materialised whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import AttentionView, ConfigError, DecodingEngine, KVPolicy, PolicyCache, PolicyLayer

AGGREGATES = ("mean", "max")
# What a key's importance for query t is: its attention from t itself (the paper's ideal top-K), or its
# attention summed over every query up to t (H2O's accumulated score), which keeps what a long history
# has used, not only what the current token looks at.
TARGETS = ("current", "accumulated")


@dataclass
class AttentionCollector(KVPolicy):
    """A keep-everything policy that accumulates aggregated attention in ``cache.state["attention"]``."""

    aggregate: str = "mean"

    needs_scores = True

    def validate(self) -> None:
        super().validate()
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"adore.labels.aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")

    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        B, K = attention.key.shape[0], attention.key.shape[2]
        state = layer.owner.state
        if "attention" not in state:  # once per forward, not per layer (a [B, T, T] float32 buffer)
            state["attention"] = attention.key.new_zeros(B, attention.q_len, K, dtype=torch.float32)
        total = state["attention"]
        for rows, probs in attention.row_chunks():
            if self.aggregate == "mean":
                total[:, rows.start : rows.stop] += probs.sum(dim=(1, 2))
            else:
                total[:, rows.start : rows.stop] = torch.maximum(
                    total[:, rows.start : rows.stop], probs.amax(dim=(1, 2))
                )
        layer.owner.state["heads"] = layer.owner.state.get("heads", 0) + probs.shape[1] * probs.shape[2]


@torch.inference_mode()
def aggregated_attention(model: torch.nn.Module, token_ids: list[int], aggregate: str = "mean") -> torch.Tensor:
    """``A [T, T]``: attention of query ``t`` to key ``i``, aggregated over all layers and heads."""
    engine = DecodingEngine(model, AttentionCollector(aggregate=aggregate))
    cache: PolicyCache = engine.new_cache()
    ids = torch.tensor([token_ids], device=engine.device)
    engine.forward(cache, ids, torch.arange(len(token_ids), device=engine.device)[None])
    attention = cache.state["attention"][0]
    return attention / cache.state["heads"] if aggregate == "mean" else attention


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ConfigError(f"method.labels.target must be one of {', '.join(TARGETS)}, got {target!r}")


def labels_for(attention: torch.Tensor, K: int, settings: dict) -> torch.Tensor:
    """:func:`topk_past` under a run's ``method.labels`` settings (keys missing: the paper's target)."""
    return topk_past(attention, K, settings.get("horizon", 1), settings.get("target", "current"))


def topk_past(attention: torch.Tensor, K: int, horizon: int = 1, target: str = "current") -> torch.Tensor:
    """Label matrix ``y [T, T]`` (bool): ``y[t, i]`` iff ``i`` is among the top-``K`` past tokens of ``t``
    (``horizon=1``, the paper's target) or of any of the queries ``t .. t + horizon - 1`` (an
    extension: a token needed a few steps later is not released now).

    ``target="current"`` ranks by ``A[t, i]`` (the paper); ``"accumulated"`` by ``sum_{s <= t} A[s, i]``,
    the score H2O keeps (an extension). Rows with fewer than ``K`` past tokens label every past token
    positive.
    """
    if horizon < 1:
        raise ConfigError(f"adore.labels.horizon must be >= 1, got {horizon}")
    return labels_from_top(top_indices(attention, K, target), horizon)


def top_indices(attention: torch.Tensor, K: int, target: str = "current") -> torch.Tensor:
    """``[T, min(K, T)]``: the top-``K`` past tokens of each query under ``target``, before the horizon
    (``T * K`` indices: what a label cache keeps instead of the ``T * T`` matrix). Rows with fewer than
    ``K`` past tokens also list future tokens, which :func:`labels_from_top` drops."""
    check_target(target)
    T = attention.shape[0]
    past = torch.ones(T, T, dtype=torch.bool, device=attention.device).tril(-1)
    if target == "accumulated":
        attention = attention.cumsum(dim=0)
    return attention.masked_fill(~past, float("-inf")).topk(min(K, T), dim=-1).indices


def labels_from_top(top: torch.Tensor, horizon: int = 1) -> torch.Tensor:
    """The label matrix ``[T, T]`` of :func:`top_indices`' picks, united over ``horizon`` queries."""
    if horizon < 1:
        raise ConfigError(f"adore.labels.horizon must be >= 1, got {horizon}")
    T = top.shape[0]
    past = torch.ones(T, T, dtype=torch.bool, device=top.device).tril(-1)
    labels = torch.zeros(T, T, dtype=torch.bool, device=top.device).scatter_(1, top.long(), True) & past
    union = labels.clone()
    for shift in range(1, min(horizon, T)):
        union[:-shift] |= labels[shift:]
    return union & past
