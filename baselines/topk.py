"""Ideal top-K sparse attention over the full cache: the quality ceiling ADORE approximates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import ConfigError, KVPolicy, attention_probs, grouped_logits, grouped_values, register_method


@register_method("topk")
@dataclass
class TopKAttention(KVPolicy):
    """Every decode query attends only to its ``K`` keys of highest score, chosen from the full cache.

    Nothing is evicted (``m`` is ignored): this is the oracle sparse attention ADORE's controller is
    trained to imitate. Selection is per query head; ties at the K-th score keep all tied keys.

    Attributes:
        K: keys each query attends to.
        sparse_prefill: also sparsify the prompt's queries (default: prefill is full attention,
            as for every other method).
        chunk: query rows processed at once (bounds memory on long prefills).
    """

    K: int = 64
    m: int | None = None
    sparse_prefill: bool = False
    chunk: int = 256

    overrides_attention = True

    def __post_init__(self) -> None:
        self.m = None  # nothing is evicted; accepted so that sweeps over method.m can include topk
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.K, int) or self.K <= 0:
            raise ConfigError(f"method.K must be a positive integer, got {self.K!r}")

    def attend(self, module, query, key, value, mask, scaling, softcap=None, sinks=None):
        """Sparse attention; ``softcap`` and ``sinks`` (``[Hq]``) are applied as the model's own attention
        does (the top-K keys are chosen on the softcapped logits; the sinks stay in the softmax)."""
        q = query.shape[2]
        sparse = q == 1 or self.sparse_prefill
        out = []
        for start in range(0, q, self.chunk):
            stop = min(start + self.chunk, q)
            logits = grouped_logits(query[:, :, start:stop], key, scaling, softcap)
            visible = self._visible(mask, start, stop, q, key.shape[2], query.device)
            if sparse and logits.shape[-1] > self.K:
                kth = logits.masked_fill(~visible, float("-inf")).topk(self.K, dim=-1).values[..., -1:]
                visible = visible & (logits >= kth)
            out.append(grouped_values(attention_probs(logits, visible, sinks), value))
        return torch.cat(out, dim=1)

    @staticmethod
    def _visible(mask, start: int, stop: int, q: int, k: int, device) -> torch.Tensor:
        """Bool ``[B|1, Hq|1, rows, K]``: the given mask, or the causal one (queries are the last ``q`` keys)."""
        if mask is None:
            rows = torch.arange(start, stop, device=device)[:, None] + (k - q)
            return torch.arange(k, device=device)[None, :] <= rows
        mask = mask[:, :, start:stop]
        return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min
