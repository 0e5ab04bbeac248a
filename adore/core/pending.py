"""The layer that waits for its attention call, for models that call ``Cache.update(k, v, layer_idx)``
without the kwargs dict they later hand to the attention function (GPT-NeoX).

Every modeling file calls the attention function right after ``update()``, with the very key tensor
``update()`` returned, so the cache marks its layer here and the attention function finds it by that
tensor. A module of its own: the cache sets it and the attention function reads it, and neither
imports the other for it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch

_PENDING: ContextVar[Any] = ContextVar("adore_pending_layer", default=None)


def mark_pending(layer: Any) -> None:
    """``layer`` (a :class:`~adore.core.cache.PolicyLayer`) returned keys from ``update()`` just now."""
    _PENDING.set(layer)


def clear_pending(layer: Any) -> None:
    if _PENDING.get() is layer:
        _PENDING.set(None)


def pending_layer(key: torch.Tensor) -> Any:
    """The layer that returned ``key`` from ``update()`` and still waits for its attention, if any."""
    layer = _PENDING.get()
    if layer is None or layer._step is None or layer._step.keys is not key:
        return None
    return layer
