"""ADORE benchmark harness: a decoding engine with pluggable KV-cache policies.

The public API is the method-agnostic core (``adore.core``); methods import only from here.
ADORE itself lives in :mod:`adore.release`; the catalog of every method (``build_policy``,
``available_methods``) in :mod:`adore.methods`.
"""

from .core.attention_view import AttentionView
from .core.cache import PolicyCache, PolicyLayer
from .core.engine import DecodingEngine, GenerationResult
from .core.errors import BudgetViolation, ConfigError, HarnessError
from .core.lifecycle import RunContext, TrainingData
from .core.models import LoadedModel, load_model, merge_adapter
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
    "load_model",
    "merge_adapter",
    "register_method",
]


def __getattr__(name: str):
    # ``from adore import build_policy`` worked before the catalog moved to ``adore.methods``; kept
    # for one release, imported on first use only (the core itself never imports a method).
    if name in ("build_policy", "available_methods"):
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'adore' has no attribute {name!r}")
