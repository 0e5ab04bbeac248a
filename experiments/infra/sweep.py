"""Resuming sweeps: a run whose configuration already has a row is skipped before the model loads.

``run.py`` calls :func:`resume_check` first for every job of a sweep. The configuration is made
canonical (a method parameter the policy ignores, such as ``full``'s ``m``, becomes ``None``, so
``method=full method.m=32,64,128`` is one run, not three), then hashed with
:func:`experiments.results.config_hash`: the same dict, and so the same hash, that
:meth:`experiments.runtime.Run.finish` writes into the row. ``force=true`` reruns regardless.

Resume is by configuration, not by code version: after a change that moves the numbers, rerun with
``force=true`` (or into a fresh ``results_dir``); the report keeps the newest row of each configuration.
"""

from __future__ import annotations

import copy
from typing import Any

from adore import ConfigError
from experiments.infra.results import config_hash, read_rows
from experiments.infra.tasks import task_spec


def canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every method parameter that the policy ignores set to ``None``.

    A parameter is ignored when it is set in the config but the built policy reports it as ``None``
    (``full`` and ``topk`` take ``m`` only so that sweeps over ``method.m`` can include them). Nothing
    else changes, so rows written before this existed keep their hashes.
    """
    if not task_spec(config["task"]["name"]).uses_policy:
        return config
    from experiments.infra.runtime import policy_from_config

    described = policy_from_config(config["method"], config).describe()
    method = dict(config["method"])
    for key, value in config["method"].items():
        if key != "name" and value is not None and key in described and described[key] is None:
            method[key] = None
    if method == config["method"]:
        return config
    return {**copy.deepcopy(config), "method": method}


def _describe(config: dict[str, Any]) -> str:
    task = config["task"]["name"]
    dataset = config["dataset"]["name"]
    spec = task_spec(task)
    if not spec.uses_policy:
        return f"{spec.title or task} on {dataset}"
    params = " ".join(f"{k}={v}" for k, v in config["method"].items() if k != "name" and v is not None)
    return (
        f"{config['method']['name']} {params}".strip()
        + f" on {dataset}"
        + (f" ({task})" if task not in ("generate", dataset) else "")
    )


def resume_check(config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``(config to run, None)``, or ``(config, skip line)`` when every row this run would write is
    already in ``<results_dir>/runs.jsonl`` and ``force`` is off."""
    force = config.get("force", False)
    if not isinstance(force, bool):
        raise ConfigError(f"force must be true or false, got {force!r}")
    task = config["task"]["name"]
    spec = task_spec(task)
    if not spec.resumable:
        return config, None
    config = canonical_config(config)
    if force:
        return config, None
    wanted = [config_hash(c) for c in spec.rows_of(config)]
    have = {
        row.get("config_hash") for row in read_rows(config["results_dir"], on_error="warn") if row.get("task") == task
    }
    if not all(h in have for h in wanted):
        return config, None
    what = "a row" if len(wanted) == 1 else "its rows"
    return config, f"skip: {_describe(config)} already has {what} (config_hash {', '.join(wanted)}); force=true reruns"
