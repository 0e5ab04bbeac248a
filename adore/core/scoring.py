"""The thin contract: a method is its score (in the spirit of kvpress's ``ScorerPress``).

A :class:`ScoredPolicy` writes one method, :meth:`ScoredPolicy.score`, returning ``[B, H, S]``
(higher is kept); the base turns it into the eviction priority and protects what every method must
keep: the newest token (always: the step that wrote it must not evict it), an optional window of
recent tokens and optional attention sinks. Padding is dropped first by the cache, whatever its score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError
from .policy import KVPolicy

if TYPE_CHECKING:
    from .cache import PolicyLayer


@dataclass
class ScoredPolicy(KVPolicy):
    """Keep the ``m`` slots of highest :meth:`score`, after the protected ones.

    Override :meth:`protected_recent` and :meth:`protected_sinks` to protect more than the newest
    token; both count towards ``m``.
    """

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        """``[B, H, S]`` importance of each stored slot (any real dtype). Ties among slots that
        compete for the last places should be broken (e.g. by position), or the keep-set is arbitrary."""
        raise NotImplementedError

    def protected_recent(self) -> int:
        """The newest tokens always kept; at least 1 whatever this returns."""
        return 1

    def protected_sinks(self) -> int:
        """The first tokens of each sequence always kept (attention sinks)."""
        return 0

    def __post_init__(self) -> None:
        super().__post_init__()  # the method's own checks first: they name its parameters
        if self.m is not None and max(1, self.protected_recent()) + self.protected_sinks() > self.m:
            raise ConfigError(
                f"method.m={self.m} is smaller than the {max(1, self.protected_recent())} recent and "
                f"{self.protected_sinks()} sink tokens it must protect; raise method.m"
            )

    def priority(self, layer: PolicyLayer) -> torch.Tensor:
        keep = layer.recent(max(1, self.protected_recent()))
        if self.protected_sinks():
            keep |= layer.sinks(self.protected_sinks())
        return self.score(layer).to(torch.float64).masked_fill(keep, float("inf"))
