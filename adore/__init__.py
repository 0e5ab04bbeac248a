"""ADORE benchmark harness: a decoding engine with pluggable KV-cache policies.

Public API:
    KVPolicy, PolicyCache, DecodingEngine, GenerationResult, AttentionView,
    register_method, build_policy, available_methods, load_model, HarnessError, ConfigError.
"""

from .attention_view import AttentionView
from .cache import PolicyCache, PolicyLayer
from .engine import DecodingEngine, GenerationResult
from .errors import BudgetViolation, ConfigError, HarnessError
from .models import LoadedModel, load_model
from .policy import KVPolicy
from .registry import available_methods, build_policy, register_method

__all__ = [
    "AttentionView",
    "BudgetViolation",
    "ConfigError",
    "DecodingEngine",
    "GenerationResult",
    "HarnessError",
    "KVPolicy",
    "LoadedModel",
    "PolicyCache",
    "PolicyLayer",
    "available_methods",
    "build_policy",
    "load_model",
    "register_method",
]
