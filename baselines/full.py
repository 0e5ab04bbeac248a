"""Full attention: the whole cache, the reference every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from adore.policy import KVPolicy
from adore.registry import register_method


@register_method("full")
@dataclass
class FullAttention(KVPolicy):
    """Keeps every token; ``m`` must stay unset (``None``)."""

    m: int | None = None
