"""TOVA, Token Omission Via Attention (Oren et al., 2024: "Transformers are Multi-State RNNs")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adore import AttentionView, ConfigError, PolicyLayer, ScoredPolicy, register_method


@register_method("tova")
@dataclass
class TOVA(ScoredPolicy):
    """When over budget, drops the slot the current query attends to least.

    The score of a slot is the attention probability it receives from the *last* query of the step
    (the newest token; after a prefill, the last prompt token), as schwartz-lab-NLP/TOVA's
    ``TOVACache.reduce`` (``attn_weights[:, :, -1, :]`` averaged over heads, then top-``m``).
    Nothing accumulates: each step's scores replace the last's.

    Grouped-query attention: ``heads="kv"`` (default) averages the query heads that share a KV head and
    keeps a set per layer and KV head; ``heads="layer"`` averages every query head of the layer and
    keeps one set per layer, shared by its KV heads, as the paper's cache does. The newest token is
    always kept (the original keeps it only when it wins, which it nearly always does).

    Attributes:
        heads: ``kv`` | ``layer``, the unit whose query heads are averaged.
    """

    m: int = 128
    heads: str = "kv"

    needs_scores = True

    def validate(self) -> None:
        super().validate()
        if self.heads not in ("kv", "layer"):
            raise ConfigError(f"method.heads must be kv or layer, got {self.heads!r}")

    def on_append(self, layer: PolicyLayer, q: int) -> None:
        layer.grow_extra("last_attention", q)

    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        last = attention.q_len - 1  # left padding: the last query row is real in every sequence
        for _, probs in attention.row_chunks(range(last, last + 1)):
            mean = probs[:, :, :, 0].mean(dim=2)  # [B, H, K]: over the query heads of each KV head
            if self.heads == "layer":
                mean = mean.mean(dim=1, keepdim=True).expand_as(mean)  # every KV head has n_rep query heads
            layer.extras["last_attention"] = mean.contiguous()

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        return layer.extras["last_attention"]
