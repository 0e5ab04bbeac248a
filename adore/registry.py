"""Method registry: name -> policy class, with errors that list the choices.

A method registers itself with ``@register_method("name")`` in its own file; ``baselines/`` and
``adore/`` are imported by :func:`load_builtin_methods`, so adding a method is one file plus one
YAML file under ``conf/method/``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from typing import Any

from .errors import ConfigError
from .policy import KVPolicy

_METHODS: dict[str, type[KVPolicy]] = {}


def register_method(name: str) -> Callable[[type[KVPolicy]], type[KVPolicy]]:
    def decorate(cls: type[KVPolicy]) -> type[KVPolicy]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        _METHODS[name] = cls
        cls.method_name = name
        return cls

    return decorate


def load_builtin_methods() -> None:
    """Import every module of ``baselines`` (and ADORE's policy) so their decorators run."""
    package = importlib.import_module("baselines")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"baselines.{info.name}")
    if importlib.util.find_spec("adore.method") is not None:
        importlib.import_module("adore.method")


def available_methods() -> list[str]:
    load_builtin_methods()
    return sorted(_METHODS)


def method_class(name: str) -> type[KVPolicy]:
    load_builtin_methods()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_policy(name: str, **params: Any) -> KVPolicy:
    """Instantiate a registered method; unknown parameters are reported with the valid ones."""
    cls = method_class(name)
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"method {name!r} has no parameter {unknown[0]!r}; its parameters are: {', '.join(sorted(known))}"
        )
    return cls(**params)
