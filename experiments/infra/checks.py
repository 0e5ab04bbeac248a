"""Checks that run before any data or model is loaded, so that a mistake costs seconds, not a run.

:func:`check_config` is one typed check of the composed config against the defaults in ``conf/``:
every key must be known (a misspelt ``+max_new_token=8`` is refused with a did-you-mean instead of
silently running 128 tokens and entering the hash) and every value must have its default's kind (an
int is an int: not ``true``, ``"abc"`` or ``1.5``). Types come from the method's dataclass fields, the
dataset loader's signature, and otherwise the default's own type. :func:`preflight` adds what needs
the file system: the results folder writable (created and probe-written), the model folder complete,
BERTScore's layer count in range. Every failure is one :class:`~adore.ConfigError` line naming the fix.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from adore import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
#: Keys whose value must be a positive integer (when set), wherever a config has them.
POSITIVE = {
    "max_new_tokens", "batch_size", "dataset.limit", "dataset.max_tokens", "dataset.size", "dataset.n_lines",
    "dataset.query_every", "dataset.distance", "dataset.max_prompt_chars", "dataset.train_size", "task.window",
    "task.chunk", "task.answer_tokens", "bertscore.num_layers",
}  # fmt: skip
#: Types of keys whose default is ``null`` (the default's own type says nothing there), or that take
#: more than their default's type (``null`` to skip a part, a fraction of a MB).
NULL_DEFAULT_TYPES: dict[str, Any] = {
    "task.text": str | None,
    "task.packing.kv_budget_mb": float | None,
    "task.profile.context_length": int | None,
    "task.references": list | None,
    "dataset.limit": int | None,
    "dataset.path": str | None,
    "dataset.max_tokens": int | None,
    "bertscore.model": str | None,
    "model.adapter": str | None,
    "model.path": str | None,
    "model.name": str | None,
    "task.run_dir": str | None,
}
#: Types of top-level keys that take more than their default's type.
TOP_TYPES: dict[str, Any] = {"batch_size": int | typing.Literal["auto"]}
#: Top-level keys no check looks into: Hydra's own.
UNCHECKED = ("hydra",)


def _raw(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}


@lru_cache(maxsize=64)
def _group_defaults(group: str, name: str) -> dict[str, Any]:
    return _raw(CONF / group / f"{name}.yaml")


def _model_defaults() -> dict[str, Any]:
    """Every key any model config has (a run may override ``model.name`` and ``model.path``)."""
    merged: dict[str, Any] = {}
    for path in sorted((CONF / "model").glob("*.yaml")):
        merged.update({k: v for k, v in _raw(path).items() if k not in merged or merged[k] is None})
    return merged


def _method_hints(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The method's parameters: ``(types from its dataclass fields, defaults from its yaml)``."""
    from dataclasses import fields

    from adore.methods import method_class

    cls = method_class(name)
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in fields(cls)}, _group_defaults("method", name)


def _dataset_hints(name: str) -> dict[str, Any]:
    from experiments.data import dataset_spec

    loader = dataset_spec(name).loader
    try:
        hints = typing.get_type_hints(loader)
    except Exception:  # an annotation that does not evaluate: no types from it
        hints = {}
    return {p: hints.get(p, Any) for p in inspect.signature(loader).parameters}


def _kind(hint: Any) -> str:
    """How a message names a type: ``an integer``, ``a number or null``..."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text", list: "a list",
             tuple: "a list", dict: "a mapping"}  # fmt: skip
    parts = [" or ".join(map(repr, typing.get_args(a))) if typing.get_origin(a) is typing.Literal
             else names.get(typing.get_origin(a) or a, str(a)) for a in args if a is not type(None)]  # fmt: skip
    return " or ".join(dict.fromkeys(parts)) + (" or null" if type(None) in args else "")


def _accepts(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type hint; ``bool`` is not an integer here (``method.m=true``)."""
    if hint is Any or hint is None:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    base = origin or hint
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if base in (list, tuple, typing.Sequence):
        return isinstance(value, list | tuple)
    if base in (dict, typing.Mapping):
        return isinstance(value, dict)
    if isinstance(base, type):
        return isinstance(value, base)
    return True


def _hint_of_default(default: Any) -> Any:
    if default is None:
        return Any
    if isinstance(default, float):
        return float
    return type(default)


def _did_you_mean(key: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def _example(path: str, hint: Any, default: Any) -> str:
    if default is not None and not isinstance(default, dict | list):
        return f"; e.g. {path}={json.dumps(default) if isinstance(default, bool) else default}"
    return f"; e.g. {path}=1" if _accepts(1, hint) else ""


def _check_value(path: str, value: Any, hint: Any, default: Any) -> None:
    if not _accepts(value, hint):
        quote = ""
        if _accepts("x", hint) and not isinstance(value, dict | list):
            quote = f" (to give it as text, quote it: {path}='{value}')"
        shown = json.dumps(value) if isinstance(value, bool | type(None)) else repr(value)
        raise ConfigError(f"{path} must be {_kind(hint)}, got {shown}{quote}{_example(path, hint, default)}")
    if path in POSITIVE and isinstance(value, int) and not isinstance(value, bool) and value <= 0:
        null = " or null" if _accepts(None, hint) else ""
        raise ConfigError(f"{path} must be positive{null}, got {value}{_example(path, hint, default)}")


def _check_section(path: str, values: dict[str, Any], hints: dict[str, Any], defaults: dict[str, Any],
                   what: str) -> None:  # fmt: skip
    known = sorted(set(hints) | set(defaults))
    for key, value in values.items():
        full = f"{path}.{key}" if path else key
        if key not in known:
            raise ConfigError(
                f"unknown key {full!r}{_did_you_mean(key, known, f'{path}.' if path else '')}; "
                f"{what} are: {', '.join(known)}"
            )
        default = defaults.get(key)
        hint = hints.get(key, Any)
        if hint is Any:
            hint = NULL_DEFAULT_TYPES.get(full, _hint_of_default(default))
        if isinstance(default, dict) and isinstance(value, dict):
            _check_section(full, value, {}, default, f"the keys of {full}")
            continue
        _check_value(full, value, hint, default)


def check_config(config: dict[str, Any]) -> None:
    """Refuse an unknown key or a value of the wrong kind anywhere in the composed config."""
    top = {k: v for k, v in _raw(CONF / "config.yaml").items() if k not in ("defaults", "hydra")}
    groups = {"method", "dataset", "model", "task"}
    top_known = sorted(set(top) | groups)
    for key in config:
        if key not in top_known and key not in UNCHECKED:
            raise ConfigError(
                f"unknown key {key!r}{_did_you_mean(key, top_known)} (a `+` adds a key only the code reads, "
                "and none reads this one); `python run.py --cfg job` lists every key"
            )
    _check_section("", {k: v for k, v in config.items() if k in top}, TOP_TYPES, top, "the top-level keys")
    method = config.get("method")
    if isinstance(method, dict) and isinstance(method.get("name"), str):
        from adore.methods import available_methods

        if method["name"] in available_methods():
            hints, defaults = _method_hints(method["name"])
            params = {k: v for k, v in method.items() if k != "name"}
            unknown = sorted(set(params) - set(hints))
            if unknown:
                raise ConfigError(
                    f"method {method['name']!r} has no parameter {unknown[0]!r}"
                    f"{_did_you_mean(unknown[0], sorted(hints))}; its parameters are: {', '.join(sorted(hints))}"
                )
            for key, value in params.items():
                default = defaults.get(key)
                if isinstance(default, dict) and isinstance(value, dict):
                    _check_section(f"method.{key}", value, {}, default, f"the keys of method.{key}")
                else:
                    _check_value(f"method.{key}", value, hints[key], default)
    dataset = config.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("name"), str):
        from experiments.data import available_datasets

        if dataset["name"] in available_datasets():
            defaults = {"limit": None, "name": "", **_group_defaults("dataset", dataset["name"])}
            hints = {k: h for k, h in _dataset_hints(dataset["name"]).items() if defaults.get(k) is None}
            _check_section("dataset", dataset, hints, defaults, f"the keys of dataset={dataset['name']}")
    task = config.get("task")
    if isinstance(task, dict) and isinstance(task.get("name"), str):
        _check_section("task", task, {}, _group_defaults("task", task["name"]), f"the keys of task={task['name']}")
    model = config.get("model")
    if isinstance(model, dict):
        _check_section("model", model, {}, _model_defaults(), "the keys of model")
    if not str(config.get("results_dir", "x")).strip():
        raise ConfigError("results_dir is empty; set results_dir=<folder> (e.g. results_dir=results)")


# ------------------------------------------------------------------------------- the file system


def check_results_dir(results_dir: str | Path, *, must_exist: bool = False) -> None:
    """The results folder exists or can be made, and a row can be written there: checked before any
    work (a run that cannot write its row would otherwise fail after all of its decoding)."""
    from experiments.infra.results import RUNS_FILE

    folder = Path(results_dir)
    fix = "set results_dir=<a folder you can write>"
    try:
        if must_exist:
            if not folder.is_dir():
                what = "is a file, not a folder" if folder.exists() else "does not exist"
                raise ConfigError(f"results_dir {str(folder)!r} {what}; give the folder that holds runs.jsonl")
            return
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"results_dir {str(folder)!r} is a file, not a folder; {fix}")
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        runs = folder / RUNS_FILE
        if runs.exists():
            # Opening for append writes nothing: the file stays byte-identical.
            os.close(os.open(runs, os.O_WRONLY | os.O_APPEND))
    except OSError as error:  # a name too long, a parent that is a file, /proc, a read-only folder or file
        reason = error.strerror or type(error).__name__
        where = f" ({error.filename})" if error.filename and str(error.filename) != str(folder) else ""
        raise ConfigError(f"results_dir {str(folder)!r} is not writable: {reason}{where}; {fix}") from None


def check_bertscore(config: dict[str, Any]) -> None:
    """``bertscore.num_layers`` within the scoring model's layers (a bad value fails inside bert-score,
    after every sample is decoded)."""
    bert = config.get("bertscore") or {}
    layers = bert.get("num_layers")
    model = bert.get("model")
    if model is None:
        from experiments.metrics import default_bertscore_model

        model = default_bertscore_model()
    config_file = Path(str(model)) / "config.json"
    if not config_file.is_file():
        if Path(str(model)).exists():
            raise ConfigError(f"bertscore.model {model!r} has no config.json; give a Hugging Face model folder")
        return  # a hub name: bert-score resolves it itself
    try:
        available = json.loads(config_file.read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"bertscore.model {model!r}: its config.json is not valid JSON") from None
    if isinstance(available, int) and isinstance(layers, int) and not 1 <= layers <= available:
        raise ConfigError(
            f"bertscore.num_layers must be in [1, {available}] for {Path(str(model)).name}, got {layers}; "
            f"e.g. bertscore.num_layers={available}"
        )


def preflight(config: dict[str, Any], uses_model: bool) -> None:
    """Everything checkable before data or a model loads, for a run of ``config``'s task."""
    check_config(config)
    task = config["task"]["name"]
    check_results_dir(config["results_dir"], must_exist=task == "report")
    if not uses_model:
        return
    from adore.core.model_checks import check_model_folder

    check_model_folder(config["model"]["path"])
    if task in ("generate", "parity"):
        check_bertscore(config)
