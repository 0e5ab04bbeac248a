"""Dataset registry: name -> loader returning :class:`Sample` s, with one-line errors.

A dataset module registers its loader with ``@register_dataset(name, task=..., prompt=...)`` (a name
registered twice is refused); the modules of this package are imported on the first lookup.
Every method sees the same prompt: the dataset's documented template, wrapped in the model's
chat template (see :func:`experiments.prompting.build_prompt_ids`).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adore import ConfigError, Registry


@dataclass(frozen=True)
class Sample:
    """One example: ``fields`` fill the prompt template; ``reference`` is the gold output.

    ``answer`` is a short gold answer scored by exact match (math: the final number), ``None`` where
    there is none. ``history`` holds earlier chat turns as ``(role, content)`` pairs (``user``,
    ``assistant``, ``system``), given to the model as chat messages before the templated user turn.
    """

    id: str
    fields: dict[str, str]
    reference: str
    answer: str | None = None
    history: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str  # "generate" (prompt -> text) or "stream" (token-by-token perplexity)
    prompt: str  # str.format template over Sample.fields
    loader: Callable[..., list[Sample]] = field(repr=False)
    description: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset", hint="(files in conf/dataset/)")


def data_folder(name: str, given: str | None = None) -> Path:
    """Where ``make setup`` puts a dataset's files: ``given``, else ``$ADORE_DATA_DIR/<name>`` (``data/<name>``)."""
    return Path(given) if given else Path(os.environ.get("ADORE_DATA_DIR", "data")) / name


def given_file(path: str, hint: str) -> Path:
    """``dataset.path`` as a file: a folder or a missing path is one line that says which it is."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"dataset.path {path!r} is a folder, not a file; give {hint}")
    if not file.is_file():
        raise ConfigError(f"dataset.path {path!r} does not exist; give {hint}")
    return file


def register_dataset(name: str, task: str, prompt: str = "", description: str = ""):
    def decorate(loader: Callable[..., list[Sample]]) -> Callable[..., list[Sample]]:
        DATASETS.add(name, DatasetSpec(name, task, prompt, loader, description))
        return loader

    return decorate


def _load_modules() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def available_datasets() -> list[str]:
    _load_modules()
    return DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    _load_modules()
    return DATASETS.get(name)


def load_samples(name: str, limit: int | None = None, **options: Any) -> list[Sample]:
    """Load a dataset's samples (the first ``limit`` of them, in the dataset's order)."""
    if limit is not None and limit <= 0:
        raise ConfigError(f"dataset.limit must be positive or null, got {limit}")
    samples = dataset_spec(name).loader(**options)
    if not samples:
        raise ConfigError(f"dataset {name!r} produced no samples; check its path and split")
    return samples[:limit] if limit is not None else samples


def dataset_options(dataset: dict[str, Any]) -> dict[str, Any]:
    """The loader keyword arguments of a dataset config (everything but the harness' own keys)."""
    return {k: v for k, v in dataset.items() if k not in ("name", "limit", "task") and v is not None}
