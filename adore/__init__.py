"""ADORE benchmark harness: a decoding engine with pluggable KV-cache policies.

The public API is the method-agnostic core (``adore.core``); methods import only from here.
ADORE itself lives in :mod:`adore.release`; the catalog of every method (``build_policy``,
``available_methods``) in :mod:`adore.methods`.
"""

from .core.attention import attention_logits, attention_probs, grouped_logits, grouped_values
from .core.attention_view import AttentionView
from .core.cache import PolicyCache, PolicyLayer
from .core.dropin import evicting
from .core.engine import DecodingEngine, GenerationResult
from .core.errors import BudgetViolation, ConfigError, HarnessError
from .core.lifecycle import RunContext, TrainingData
from .core.models import LoadedModel, kv_bytes_per_token, load_model, merge_adapter
from .core.policy import KVPolicy
from .core.positions import CacheRelativePositions
from .core.registry import ADAPTER_SCHEMES, METHODS, Registry, register_method
from .core.scoring import ScoredPolicy
from .core.timing import DeviceTimer, StepTimer

__all__ = [
    "ADAPTER_SCHEMES",
    "METHODS",
    "AttentionView",
    "BudgetViolation",
    "CacheRelativePositions",
    "ConfigError",
    "DecodingEngine",
    "DeviceTimer",
    "GenerationResult",
    "HarnessError",
    "KVPolicy",
    "LoadedModel",
    "PolicyCache",
    "PolicyLayer",
    "Registry",
    "RunContext",
    "ScoredPolicy",
    "StepTimer",
    "TrainingData",
    "attention_logits",
    "attention_probs",
    "evicting",
    "grouped_logits",
    "grouped_values",
    "kv_bytes_per_token",
    "load_model",
    "merge_adapter",
    "register_method",
]


def __getattr__(name: str):
    # The catalog moved to ``adore.methods``; importing it from here would make the package that
    # every method imports import every method (a cycle), so the old name is a pointer, not an alias.
    if name in ("build_policy", "available_methods"):
        raise AttributeError(f"adore.{name} moved: use `from adore.methods import {name}`")
    raise AttributeError(f"module 'adore' has no attribute {name!r}")
