"""Full attention: the whole cache, the reference every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from adore import KVPolicy, register_method


@register_method("full")
@dataclass
class FullAttention(KVPolicy):
    """Keeps every token. ``m`` is accepted and ignored (recorded as ``None``), so that a sweep over
    ``method.m`` can include ``full`` as its reference."""

    m: int | None = None

    def __post_init__(self) -> None:
        self.m = None
        super().__post_init__()
