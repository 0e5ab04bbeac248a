"""Attention probabilities of one step, computed only for the policies that ask for them.

The engine runs PyTorch's scaled-dot-product attention (no weights returned); a policy that needs
the probabilities (H2O, Scissorhands, oracle top-K) reads them from an :class:`AttentionView`,
which recomputes ``softmax(q k^T)`` for the rows it asks for, chunked over queries so that a long
prefill never materialises the full ``[B, Hq, T, T]`` matrix at once.

Grouped-query attention: query head ``h`` reads KV head ``h // n_rep`` (as ``repeat_kv`` does).
Every helper returns statistics per *KV head*, aggregating the ``n_rep`` query heads that share it,
because a KV head is the unit that can be evicted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .attention import grouped_logits


@dataclass
class AttentionView:
    """Lazily computed attention probabilities for one layer and one forward step.

    Attributes:
        query: ``[B, Hq, q, D]`` post-RoPE queries of the new tokens.
        key: ``[B, H, K, D]`` post-RoPE keys the queries attended to (stored + new).
        mask: ``[B, H, q, K]`` bool, True where a query may attend; ``None`` means all visible.
        scaling: softmax temperature (``1/sqrt(D)`` for Llama).
        chunk: query rows processed at once.
        softcap: the model's attention-logit softcapping (Gemma 2), applied as its attention does.
        sinks: ``[Hq]`` the model's learned sink logits (gpt-oss): they take part in the softmax, so the
            probabilities of the real keys sum to less than one, as in the model.
    """

    query: torch.Tensor
    key: torch.Tensor
    mask: torch.Tensor | None
    scaling: float
    chunk: int = 256
    softcap: float | None = None
    sinks: torch.Tensor | None = None

    @property
    def n_rep(self) -> int:
        return self.query.shape[1] // self.key.shape[1]

    @property
    def q_len(self) -> int:
        return self.query.shape[2]

    def row_chunks(self, rows: range | None = None) -> Iterator[tuple[range, torch.Tensor]]:
        """Yield ``(rows, probs)`` with probs ``[B, H, n_rep, r, K]`` float32, ``r`` rows at a time."""
        rows = rows if rows is not None else range(self.q_len)
        B, H = self.query.shape[0], self.key.shape[1]
        for start in range(rows.start, rows.stop, self.chunk):
            sub = range(start, min(start + self.chunk, rows.stop))
            logits = grouped_logits(self.query[:, :, sub.start : sub.stop], self.key, self.scaling, self.softcap)
            logits = logits.view(B, H, self.n_rep, len(sub), -1)  # the query heads of a KV head together
            if self.mask is not None:
                visible = self.mask[:, :, sub.start : sub.stop][:, :, None]
                logits.masked_fill_(~visible, float("-inf"))
            if self.sinks is not None:
                sink = self.sinks.float().view(1, H, self.n_rep, 1, 1).expand(B, H, self.n_rep, len(sub), 1)
                probs = torch.cat([logits, sink], dim=-1).softmax(-1)[..., :-1]
            else:
                probs = logits.softmax(-1)
            # A row that sees nothing (a pad query) would be NaN; make it all zeros instead.
            yield sub, probs.nan_to_num_(nan=0.0)

    def column_sums(self) -> torch.Tensor:
        """Attention mass each key received, summed over all query rows and the ``n_rep`` heads: ``[B, H, K]``."""
        total = self.key.new_zeros(self.key.shape[:3], dtype=torch.float32)
        for _, probs in self.row_chunks():
            total += probs.sum(dim=(2, 3))
        return total

    def visible_counts(self) -> torch.Tensor:
        """How many keys each query row may attend to: ``[B, H, q]``."""
        if self.mask is None:
            B, H, K = self.key.shape[:3]
            return torch.full((B, H, self.q_len), K, dtype=torch.long, device=self.key.device)
        return self.mask.sum(-1)
