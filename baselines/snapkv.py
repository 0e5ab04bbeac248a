"""SnapKV (Li et al., 2024: "SnapKV: LLM Knows What You are Looking for Before Generation"), with
re-compression every ``interval`` generated tokens (the reasoning-model use of SnapKV, as in R-KV)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adore import AttentionView, ConfigError, PolicyLayer, ScoredPolicy, register_method


@register_method("snapkv")
@dataclass
class SnapKV(ScoredPolicy):
    """Keeps the last ``window`` tokens plus the earlier ones the window's queries attend to most.

    The rule of FasterDecoding/SnapKV's ``SnapKVCluster.update_kv``: the attention probabilities of
    the last ``window`` queries are summed over those queries, pooled along the sequence with
    ``kernel`` (``maxpool``, or ``avgpool`` with zero padding) over the tokens before the window
    only, and the top ``m - window`` of them are kept with the window. It runs after the prefill
    (when the prompt exceeds ``m``) and then every ``interval`` generated tokens over the latest
    ``window`` queries, so between compressions a layer holds up to ``m + interval - 1`` slots: that
    is the budget the engine asserts (``interval=1``: every step, exactly ``m``).

    Grouped-query attention: scores are pooled per query head, then averaged over the query heads of
    each KV head (kvpress's fix of SnapKV issue 22; the original repeats the KV heads instead, which
    saves no memory). After a decode-time compression the kept tokens are no longer contiguous;
    pooling runs over the stored tokens in position order. Ties (max pooling makes many) drop the
    oldest first.

    Attributes:
        window: observation window (the last queries; also always kept). Must be below ``m``. The
            default 8 is KVCache-Factory's (the LongBench runs of PyramidKV and Ada-KV at budgets of
            64 to 2048); SnapKV's own paper used 32 at budgets of 1024 and more (``window=32``).
        kernel: pooling width (odd).
        pooling: ``maxpool`` | ``avgpool``.
        interval: generated tokens between compressions.
    """

    m: int = 128
    window: int = 8
    kernel: int = 7
    pooling: str = "maxpool"
    interval: int = 1

    needs_scores = True

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.window, int) or not 1 <= self.window < self.m:
            raise ConfigError(f"method.window must be in [1, m), got {self.window} with m={self.m}; lower it")
        if not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"method.kernel must be a positive odd integer, got {self.kernel!r}")
        if self.pooling not in ("maxpool", "avgpool"):
            raise ConfigError(f"method.pooling must be maxpool or avgpool, got {self.pooling!r}")
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ConfigError(f"method.interval must be a positive integer, got {self.interval!r}")

    def protected_recent(self) -> int:
        return self.window

    # ---- the schedule: after the prefill, then every `interval` generated tokens ----------------
    def layer_keep(self, layer: PolicyLayer) -> int:
        """Slots per KV head right after a compression of ``layer`` (PyramidKV: per layer)."""
        return self.m

    def layer_budget(self, layer: PolicyLayer) -> int:
        return self.layer_keep(layer) + self.interval - 1

    def layer_target(self, layer: PolicyLayer) -> int:
        return self.layer_keep(layer)

    def evicts_now(self, layer: PolicyLayer) -> bool:
        generated = layer.feeds - 1  # the first feed is the prefill
        due = generated == 0 or generated % self.interval == 0
        return due and layer.stored > self.layer_keep(layer)

    # ---- the window's attention, per query head, kept for the latest `window` queries --------
    def on_append(self, layer: PolicyLayer, q: int) -> None:
        ring = layer.extras.get("window_attention")
        if ring is not None:
            layer.grow_extra("window_attention", q, torch.float32, *ring.shape[3:])

    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        q, n_rep = attention.q_len, attention.n_rep
        B, H, S = attention.key.shape[:3]
        ring = layer.extras.get("window_attention")
        if ring is None:
            ring = attention.key.new_zeros(B, H, S, n_rep, self.window, dtype=torch.float32)
        first = layer.seen - q  # this step's first query, counted over the layer's feeds
        for sub, probs in attention.row_chunks(range(max(0, q - self.window), q)):
            for i, row in enumerate(sub):  # probs [B, H, n_rep, r, K]; pad queries are all zero
                ring[..., (first + row) % self.window] = probs[:, :, :, i].transpose(2, 3)
        layer.extras["window_attention"] = ring

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        summed = layer.extras["window_attention"].sum(-1)  # [B, H, S, n_rep]
        B, H, S, n_rep = summed.shape
        before = layer.valid & ~layer.recent(self.window)  # pooled over the tokens before the window only
        summed = summed.masked_fill(~before[..., None], 0.0)
        order = layer.positions.masked_fill(~layer.valid, -1).argsort(dim=-1, stable=True)  # position order
        ordered = summed.gather(2, order[..., None].expand_as(summed))
        rows = ordered.permute(0, 1, 3, 2).reshape(B * H * n_rep, 1, S)
        if self.pooling == "maxpool":  # attention is >= 0, so zeros outside the prefix act as its padding
            pooled = F.max_pool1d(rows, self.kernel, stride=1, padding=self.kernel // 2)
        else:
            pooled = F.avg_pool1d(rows, self.kernel, stride=1, padding=self.kernel // 2, count_include_pad=True)
        pooled = pooled.reshape(B, H, n_rep, S).mean(dim=2)  # averaged over the query heads of a KV head
        return torch.empty_like(pooled).scatter_(2, order, pooled)
