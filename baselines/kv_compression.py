"""KV compression: Scissorhands (Liu et al., NeurIPS 2023), persistence of importance.

The ADORE paper compares with a "KV compression" baseline without naming the method; we use
Scissorhands, the budgeted KV-cache compressor of the same period (see README).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import AttentionView, ConfigError, PolicyLayer, ScoredPolicy, register_method

_COUNT_SCALE = float(2**32)  # counts dominate; the position only breaks ties (older goes first)


@register_method("kv_compression")
@dataclass
class Scissorhands(ScoredPolicy):
    """Drops the tokens that were most often unimportant over a recent history of queries.

    A token is *unimportant* for a query when the attention it gets (averaged over the query heads
    that share its KV head) is below the average ``1/t``, ``t`` being the number of tokens that
    query sees. Per layer and KV head, each token counts how often it was unimportant over the last
    ``history_window`` queries; when the cache exceeds ``m``, the ``drop_amount`` tokens with the
    highest counts are dropped (ties: older first), the ``recent`` newest tokens (and always the
    newest one) being protected.

    Attributes:
        history_window: queries remembered (``w`` in the paper).
        recent: newest tokens never dropped (``r``); ``None`` means ``m // 4``.
        drop_amount: tokens dropped at once when the budget is exceeded (``1``: every step).
    """

    m: int = 128
    history_window: int = 32
    recent: int | None = None
    drop_amount: int = 1

    needs_scores = True

    def validate(self) -> None:
        super().validate()
        if self.history_window <= 0:
            raise ConfigError(f"method.history_window must be positive, got {self.history_window}")
        if self.recent is None:
            self.recent = self.m // 4
        if not 0 <= self.recent < self.m:
            raise ConfigError(f"method.recent must be in [0, m), got {self.recent} with m={self.m}")
        if not 1 <= self.drop_amount <= self.m - self.recent:
            raise ConfigError(f"method.drop_amount must be in [1, m - recent], got {self.drop_amount}")

    def target_size(self, stored: int) -> int:
        return self.m + 1 - self.drop_amount

    def protected_recent(self) -> int:
        return self.recent

    def on_append(self, layer: PolicyLayer, q: int) -> None:
        layer.grow_extra("unimportant", q, torch.bool, self.history_window)

    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        q = attention.q_len
        first_query = layer.seen - q  # global index of this step's first query row
        rows = range(max(0, q - self.history_window), q)  # older rows would be overwritten anyway
        visible_counts = attention.visible_counts()
        history = layer.extras["unimportant"]
        for sub, probs in attention.row_chunks(rows):
            mean = probs.mean(dim=2)  # [B, H, r, K], averaged over the query heads of a KV head
            counts = visible_counts[:, :, sub.start : sub.stop, None]
            visible = attention.mask[:, :, sub.start : sub.stop] if attention.mask is not None else True
            below = (mean * counts < 1.0) & visible  # a < 1/t, only for keys the query could see
            for i, row in enumerate(sub):
                history[..., (first_query + row) % self.history_window] = below[:, :, i]

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        counts = layer.extras["unimportant"].sum(-1).to(torch.float64)
        return -counts * _COUNT_SCALE + layer.positions.to(torch.float64)
