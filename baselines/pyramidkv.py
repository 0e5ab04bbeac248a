"""PyramidKV (Cai et al., 2024: "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
Information Funneling"): SnapKV's rule with per-layer budgets that shrink with depth."""

from __future__ import annotations

from dataclasses import dataclass

from adore import ConfigError, PolicyLayer, register_method

from .snapkv import SnapKV


def pyramid_budgets(m: int, window: int, beta: int, layers: int) -> list[int]:
    """Per-layer slot budgets, window included, averaging exactly ``m``.

    Zefan-Cai/KVCache-Factory's ``PyramidKVCluster``: the budget beyond the window falls linearly from
    ``max = 2a - a/beta`` in the first layer to ``min = a/beta`` in the last, where ``a = m - window``
    (so the mean is ``a``). The original rounds each layer on its own; we round by largest remainder
    so that the layers sum to exactly ``layers * m`` (at most one token per layer differs).
    """
    spare = m - window
    if layers == 1:
        return [m]
    low = spare / beta
    high = 2 * spare - low
    exact = [high - layer * (high - low) / (layers - 1) for layer in range(layers)]
    floors = [int(x) for x in exact]
    short = spare * layers - sum(floors)
    for layer in sorted(range(layers), key=lambda i: (floors[i] - exact[i], i))[:short]:
        floors[layer] += 1
    return [window + b for b in floors]


@register_method("pyramidkv")
@dataclass
class PyramidKV(SnapKV):
    """SnapKV per layer, layer ``l`` keeping ``pyramid_budgets(m, window, beta, L)[l]`` slots per KV head.

    The budgets average ``m`` over the layers; the first layers hold more than ``m``, the last ones
    less, and the engine asserts each layer's own budget (plus ``interval - 1``). The original
    compresses once, after the prefill, and re-shapes the pyramid when the prompt is shorter than its
    first layer's budget; here the shape is fixed (so a sequence's budgets do not depend on the batch
    it is in), and generated tokens are re-compressed every ``interval`` as for ``snapkv``.

    Attributes:
        beta: steepness: the last layer keeps ``(m - window) / beta`` tokens beyond the window.
    """

    beta: int = 20

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.beta, int) or self.beta < 1:
            raise ConfigError(f"method.beta must be an integer >= 1, got {self.beta!r}")

    def layer_keep(self, layer: PolicyLayer) -> int:
        return pyramid_budgets(self.m, self.window, self.beta, len(layer.owner.layers))[layer.layer_idx]
