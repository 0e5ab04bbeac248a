"""Quest (Tang et al., ICML 2024: "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import ConfigError, KVPolicy, PolicyLayer, attention_probs, grouped_logits, grouped_values, register_method


@register_method("quest")
@dataclass
class Quest(KVPolicy):
    """Recall without eviction: the whole cache stays, each decode query reads only its best pages.

    mit-han-lab/Quest's evaluation rule (``evaluation/quest_attention.py``): the keys are cut into
    pages of ``page_size`` tokens (by position, from position 0); each page keeps the per-channel
    minimum and maximum of its keys; a query's upper bound on a page's logits is
    ``sum_d max(q_d * max_d, q_d * min_d)``; the query attends to the ``max(3, K // page_size)``
    pages of highest bound (all of them when there are fewer), per query head. The prompt (every
    multi-token feed) and the first ``skip_layers`` layers use full attention, as Quest's.

    It saves attention *reads*, not memory: nothing is evicted, so its KV MB equals ``full``'s (and
    ``m`` is ignored). Grouped-query attention: the pages' min/max are those of the KV head's keys,
    and every query head picks its own pages. The bounds are computed from the stored keys at each
    step (the same numbers Quest's page metadata holds). Ties between pages keep the older page.

    Attributes:
        K: token budget per query (``K // page_size`` pages, at least 3).
        page_size: tokens per page.
        skip_layers: the first layers that keep full attention.
    """

    K: int = 64
    page_size: int = 16
    skip_layers: int = 2
    m: int | None = None

    overrides_attention = True

    def __post_init__(self) -> None:
        self.m = None  # nothing is evicted; accepted so that sweeps over method.m can include quest
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        for name in ("K", "page_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"method.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.skip_layers, int) or self.skip_layers < 0:
            raise ConfigError(f"method.skip_layers must be a non-negative integer, got {self.skip_layers!r}")

    @property
    def pages(self) -> int:
        return max(3, self.K // self.page_size)

    def attend(
        self, module, query, key, value, mask, scaling, softcap=None, sinks=None, layer: PolicyLayer | None = None
    ):
        Hq, q = query.shape[1], query.shape[2]
        n_rep = Hq // key.shape[1]
        logits = grouped_logits(query, key, scaling, softcap)  # [B, Hq, q, S]
        if mask is None:
            rows = torch.arange(q, device=query.device)[:, None] + (key.shape[2] - q)
            visible = (torch.arange(key.shape[2], device=query.device)[None, :] <= rows)[None, None]
        else:
            visible = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min
        if q == 1 and layer.layer_idx >= self.skip_layers:
            visible = visible & self.page_mask(query, key, layer, n_rep)
        return grouped_values(attention_probs(logits, visible, sinks), value)

    def page_mask(self, query: torch.Tensor, key: torch.Tensor, layer: PolicyLayer, n_rep: int) -> torch.Tensor:
        """``[B, Hq, 1, S]`` bool: the slots in the pages each query head reads."""
        B, H, S, D = key.shape
        page = (layer.positions // self.page_size).masked_fill(~layer.valid, 0)  # [B, H, S]
        n_pages = int(page.max()) + 1
        index = page[..., None].expand(B, H, S, D)
        k = key.float()
        hi = k.new_full((B, H, n_pages, D), float("-inf"))
        hi = hi.scatter_reduce(2, index, k.masked_fill(~layer.valid[..., None], float("-inf")), "amax")
        lo = k.new_full((B, H, n_pages, D), float("inf"))
        lo = lo.scatter_reduce(2, index, k.masked_fill(~layer.valid[..., None], float("inf")), "amin")
        empty = torch.isinf(hi[..., 0])  # [B, H, P]: a page with no live key
        hi, lo = hi.masked_fill(empty[..., None], 0), lo.masked_fill(empty[..., None], 0)
        qh = query[:, :, 0].float().reshape(B, H, n_rep, 1, D)  # query head h reads KV head h // n_rep
        bound = torch.maximum(qh * hi[:, :, None], qh * lo[:, :, None]).sum(-1)  # [B, H, n_rep, P]
        bound = bound.masked_fill(empty[:, :, None], float("-inf"))
        take = min(self.pages, n_pages)
        ranked = bound.argsort(dim=-1, descending=True, stable=True)[..., :take]  # ties: the older page
        chosen = torch.zeros_like(bound, dtype=torch.bool).scatter_(-1, ranked, True)  # [B, H, n_rep, P]
        slots = chosen.gather(-1, page[:, :, None].expand(B, H, n_rep, S))  # [B, H, n_rep, S]
        return slots.reshape(B, H * n_rep, 1, S)
