"""Dataset registry: name -> loader returning :class:`Sample` s, with one-line errors.

A dataset module registers its loader with ``@register_dataset(name, task=..., prompt=...)``.
Every method sees the same prompt: the dataset's documented template, wrapped in the model's
chat template (see :func:`experiments.prompting.build_prompt_ids`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adore.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    """One example: ``fields`` fill the prompt template; ``reference`` is the gold output."""

    id: str
    fields: dict[str, str]
    reference: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str  # "generate" (prompt -> text) or "stream" (token-by-token perplexity)
    prompt: str  # str.format template over Sample.fields
    loader: Callable[..., list[Sample]] = field(repr=False)
    description: str = ""


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, task: str, prompt: str = "", description: str = ""):
    def decorate(loader: Callable[..., list[Sample]]) -> Callable[..., list[Sample]]:
        _DATASETS[name] = DatasetSpec(name, task, prompt, loader, description)
        return loader

    return decorate


def _load_modules() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def available_datasets() -> list[str]:
    _load_modules()
    return sorted(_DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    _load_modules()
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def load_samples(name: str, limit: int | None = None, **options: Any) -> list[Sample]:
    """Load a dataset's samples (the first ``limit`` of them, in the dataset's order)."""
    if limit is not None and limit <= 0:
        raise ConfigError(f"dataset.limit must be positive or null, got {limit}")
    samples = dataset_spec(name).loader(**options)
    if not samples:
        raise ConfigError(f"dataset {name!r} produced no samples; check its path and split")
    return samples[:limit] if limit is not None else samples
