"""The policy interface: the one thing a KV-cache method implements.

A policy decides, after every forward step, which cached tokens survive. Most methods need only
:class:`~adore.core.scoring.ScoredPolicy` (write a score per slot); this is the full interface. The engine owns the
tensors; the policy only ranks slots. Per-layer, per-slot statistics (H2O's accumulated attention,
Scissorhands' history) live in ``layer.extras`` so that they are gathered together with the keys
they describe. Policies are dataclasses: their fields are their hyper-parameters, so ``repr(policy)``
is a complete, loggable description.

Shapes used throughout: ``B`` batch, ``H`` KV heads, ``S`` stored slots, ``q`` new tokens,
``D`` head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .attention_view import AttentionView
    from .cache import PolicyCache, PolicyLayer
    from .lifecycle import RunContext
    from .models import LoadedModel


@dataclass
class KVPolicy:
    """Base policy: keeps everything (full attention). Subclasses override what they need.

    Attributes:
        m: cache budget in tokens per layer and KV head; ``None`` means unbounded.
    """

    m: int | None = None

    #: The registered name (set by ``register_method``).
    method_name: ClassVar[str] = ""
    #: True if :meth:`observe` needs this step's attention probabilities.
    needs_scores: ClassVar[bool] = False
    #: True if :meth:`attend` replaces scaled-dot-product attention over the stored keys.
    overrides_attention: ClassVar[bool] = False
    #: True if the keep-set is the same in every layer and KV head: eviction is then planned once per
    #: step, after the whole forward, and applied to every layer.
    uniform: ClassVar[bool] = False
    #: How kept slots are selected: ``"gather"`` (indexing) or ``"matmul"`` (0/1 selection matrices;
    #: uniform policies only). Deliberately not annotated: a subclass may make it a field (ADORE).
    slicing = "gather"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line fix for out-of-range parameters."""
        if self.m is not None and (not isinstance(self.m, int) or self.m <= 0):
            raise ConfigError(f"method.m must be a positive integer, got {self.m!r}; set e.g. method.m=128")

    #: Settings that older rows kept in a top-level config section: ``(section, {key: default})``.
    #: The row hash puts them back there, so rows written before the move stay resumable.
    moved_settings: ClassVar[tuple[str, dict[str, Any]] | None] = None

    @classmethod
    def row_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """A result row's ``method_params`` as today's rows write them: a parameter that older rows
        lack gets the value those runs used (the report compares old and new rows as equals)."""
        return params

    # ---- lifecycle hooks, all optional: the harness calls them, and never names a method ------
    def check(self, context: RunContext) -> None:
        """Cheap checks before the model loads (e.g. that a needed checkpoint exists or can be trained)."""

    def prepare(self, context: RunContext, loaded: LoadedModel) -> None:
        """Set-up with the loaded model, before the first batch (e.g. bind a trained controller). May
        replace ``loaded.model`` and ``loaded.name`` (a merged adapter)."""

    def fit(self, context: RunContext, loaded: LoadedModel) -> str:
        """``task=train``: train what the method learns; returns a one-paragraph summary."""
        raise ConfigError(f"method {self.method_name!r} has nothing to train; task=train is for methods that learn")

    def composed(self) -> KVPolicy:
        """The policy the engine runs: itself, or itself inside the wrappers its paper composes it
        with (StreamingLLM: :class:`~adore.core.positions.CacheRelativePositions`)."""
        return self

    @property
    def max_step_tokens(self) -> int:
        """The most tokens one decode step feeds (the current token, plus any the policy adds in
        :meth:`prepare_step`): a step holds up to ``budget + max_step_tokens`` slots before eviction."""
        return 1

    # ---- per-step hooks, all optional -------------------------------------------------
    def prepare_step(
        self, cache: PolicyCache, input_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """See the tokens of a forward before the model does; may add tokens to feed with them (ADORE's
        rebuild). Returns ``(input_ids, positions, valid)``, each ``[B, q']``; the current tokens stay last."""
        return input_ids, positions, valid

    def on_append(self, layer: PolicyLayer, q: int) -> None:
        """Extend ``layer.extras`` for ``q`` slots just appended at the end."""

    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        """Update per-slot statistics from this step's attention (only when ``needs_scores``)."""

    def priority(self, layer: PolicyLayer) -> torch.Tensor:
        """Rank the stored slots: ``[B, H, S]`` float, higher is kept. Invalid slots are dropped first
        by the layer, whatever their priority. Must be free of ties among slots that compete."""
        return layer.positions.to(torch.float64)

    def target_size(self, stored: int) -> int:
        """How many slots to keep once ``stored`` exceeds ``m`` (default: exactly ``m``)."""
        assert self.m is not None
        return self.m

    def keys_for_attention(self, layer: PolicyLayer, keys: torch.Tensor) -> torch.Tensor:
        """The keys the new queries see (``[B, H, S+q, D]``); StreamingLLM re-rotates them here."""
        return keys

    def rope_position_ids(self, cache: PolicyCache, position_ids: torch.Tensor) -> torch.Tensor:
        """Positions given to RoPE for the new tokens (``[B, q]``); default: their original positions."""
        return position_ids

    def attend(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        mask: torch.Tensor | None, scaling: float,
    ) -> torch.Tensor:  # fmt: skip
        """Replacement attention (only when ``overrides_attention``); returns ``[B, q, Hq, D]``."""
        raise NotImplementedError

    # ---- per-layer budgets and schedules (all optional; the defaults are "m, every step") ----------
    def layer_budget(self, layer: PolicyLayer) -> int | None:
        """The most slots ``layer`` may hold after a step (default: :attr:`budget`, the same in every
        layer). PyramidKV's budgets shrink with depth; a method that compresses every few steps
        (SnapKV's ``interval``) declares its slack here, and the engine asserts exactly this."""
        return self.budget

    def evicts_now(self, layer: PolicyLayer) -> bool:
        """Whether ``layer`` evicts after this step's attention (default: when over its budget)."""
        budget = self.layer_budget(layer)
        return budget is not None and layer.stored > budget

    def layer_target(self, layer: PolicyLayer) -> int:
        """How many slots per (sequence, KV head) ``layer`` keeps when it evicts (default: :meth:`target_size`)."""
        return self.target_size(layer.stored)

    def selection(self, layer: PolicyLayer) -> torch.Tensor | None:
        """Ragged per-head keep-sets: ``[B, H, S]`` bool, the slots to keep (Ada-KV's budgets per head),
        or ``None`` (default) for the ``layer_target`` highest-priority slots of every head. The layer
        stores the widest head's count and marks the rest of the narrower heads' slots invalid (masked,
        and dropped first at the next eviction), so the KV bytes it reports are those it holds."""
        return None

    def budget_violation(self, layer: PolicyLayer) -> str | None:
        """What is wrong with ``layer``'s size after a step (``None``: nothing); the engine raises it."""
        budget = self.layer_budget(layer)
        if budget is not None and layer.stored > budget:
            return f"holds {layer.stored} > m={budget} tokens"
        return None

    # ---- helpers ----------------------------------------------------------------------
    @property
    def budget(self) -> int | None:
        """The most slots a layer may hold after a step (``None``: unbounded). With per-layer budgets
        (:meth:`layer_budget`) this is the largest a layer can be given."""
        return self.m

    def describe(self) -> dict:
        """Hyper-parameters as a plain dict (for result rows)."""
        from dataclasses import asdict

        return asdict(self)
