"""The task registry: what ``task=<name>`` runs, and what the harness may assume about it.

A task registers itself where it is defined::

    @register_task("stream", resumable=True, uses_policy=True, metrics=("perplexity", ...),
                   summary=lambda row: f"perplexity {row['perplexity']}")
    def run_stream(cfg): ...

``run.py`` dispatches through :func:`task_spec`; the resume check (:mod:`experiments.infra.sweep`)
and the report (:mod:`experiments.reporting.report`) read the spec's declarations instead of lists of
task names, so a new task is one module and one ``conf/task/<name>.yaml``.

Task modules are found by scanning :data:`TASK_PACKAGES` on first lookup (as the dataset registry
does), so this module imports no task and no task imports the others.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adore import Registry

#: Packages whose modules may register tasks.
TASK_PACKAGES = ("experiments.tasks", "experiments.reporting")

Config = dict[str, Any]


def _one_config(config: Config) -> list[Config]:
    return [config]


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    Attributes:
        name: the ``task=`` value (and ``conf/task/<name>.yaml``).
        run: ``run(cfg) -> result`` (a row, a list of rows, or text).
        rows_of: the configs whose hashes the rows of one run carry, so that a run whose rows all
            exist is skipped before the model loads; ``None`` for a task that always runs (one whose
            row count depends on what it measures, or that writes no row).
        uses_policy: ``cfg["method"]`` builds the run's policy (its ignored parameters are made
            canonical before hashing, see :func:`experiments.infra.sweep.canonical_config`).
        metrics: row keys the report tabulates for this task, in order (empty: the report's
            general columns).
        summary: the line printed after a run, from its result (``None``: print nothing).
        title: how messages name a run of a task that uses no policy (default: its name).
        uses_model: the task loads ``model.path`` (its folder is checked before the task starts).
    """

    name: str
    run: Callable[[Config], Any] = field(repr=False)
    rows_of: Callable[[Config], list[Config]] | None = field(default=None, repr=False)
    uses_policy: bool = False
    metrics: tuple[str, ...] = ()
    summary: Callable[[Any], str | None] | None = field(default=None, repr=False)
    title: str = ""
    uses_model: bool = True

    @property
    def resumable(self) -> bool:
        return self.rows_of is not None


TASKS: Registry[TaskSpec] = Registry("task", hint="(files in conf/task/)")


def register_task(
    name: str,
    *,
    resumable: bool | Callable[[Config], list[Config]] = False,
    uses_policy: bool = False,
    metrics: tuple[str, ...] = (),
    summary: Callable[[Any], str | None] | None = None,
    title: str = "",
    uses_model: bool = True,
) -> Callable[[Callable[[Config], Any]], Callable[[Config], Any]]:
    """Decorator over a task's ``run(cfg)``. ``resumable=True`` means one row per run, hashed from
    the run's config; pass a function for tasks whose rows carry other configs (``parity``)."""
    rows_of = (_one_config if resumable is True else resumable) or None

    def decorate(run: Callable[[Config], Any]) -> Callable[[Config], Any]:
        TASKS.add(name, TaskSpec(name, run, rows_of, uses_policy, tuple(metrics), summary, title, uses_model))
        return run

    return decorate


def _discover() -> None:
    for package_name in TASK_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{info.name}")


def task_spec(name: str) -> TaskSpec:
    """The registered task ``name`` (one line with a did-you-mean when there is none)."""
    _discover()
    return TASKS.get(name)


def all_tasks() -> list[TaskSpec]:
    _discover()
    return [spec for _, spec in TASKS.items()]
