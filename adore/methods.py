"""The catalog of every method: the baselines and ADORE, built by name from their parameters.

This module is the one place that imports every method package (so their ``@register_method``
decorators run); the core never does. Tasks build policies through :func:`build_policy`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import baselines  # noqa: F401  (registers every baseline)
from adore.core.errors import ConfigError
from adore.core.policy import KVPolicy
from adore.core.registry import METHODS
from adore.release import policy as _adore  # noqa: F401  (registers ADORE)


def available_methods() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[KVPolicy]:
    return METHODS.get(name)


def method_parameters(name: str) -> set[str]:
    return {f.name for f in fields(method_class(name))}


def build_policy(name: str, **params: Any) -> KVPolicy:
    """Instantiate a registered method; an unknown parameter is reported with the valid ones."""
    cls = method_class(name)
    known = method_parameters(name)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"method {name!r} has no parameter {unknown[0]!r}; its parameters are: {', '.join(sorted(known))}"
        )
    return cls(**params)
