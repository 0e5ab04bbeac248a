"""Loading a dataset from the Hugging Face hub through ``datasets``, or a local file in the hub's format.

Every hub loader takes ``path=``: a ``.json``/``.jsonl``/``.parquet``/``.csv`` file with the hub
dataset's columns, loaded with ``datasets.load_dataset("json"|"parquet"|"csv", data_files=path)``
(the whole file is the split). Without it, the hub is asked; where the hub cannot be reached (no
network, or ``HF_HUB_OFFLINE=1``, which ``run.py`` sets unless told otherwise) the loader fails with
one line that names the offline stand-in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from adore import ConfigError

FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def hub_rows(
    name: str,
    hub_id: str,
    split: str,
    path: str | None,
    standin: str,
    file_hint: str,
    config: str | None = None,
    streaming: bool = False,
) -> Iterable[dict[str, Any]]:
    """The rows of ``hub_id`` (``config``, ``split``), or of the local file ``path``.

    ``standin`` and ``file_hint`` go into the one-line error: ``use dataset=<standin>, or
    dataset.path=<file_hint>``.
    """
    fix = f"use dataset={standin}, or dataset.path=<{file_hint}>"
    import datasets

    datasets.disable_progress_bars()
    if path:
        from experiments.data import given_file

        file = given_file(path, f"a {file_hint}")
        builder = FILE_FORMATS.get(file.suffix.lower())
        if builder is None:
            raise ConfigError(f"dataset.path {path!r}: unknown format; give a {', '.join(FILE_FORMATS)} file")
        if file.stat().st_size == 0:
            raise ConfigError(f"dataset.path {path!r} is empty; give a {file_hint}")
        failed = f"dataset.path {path!r} could not be read as {builder} ({{reason}}); give a {file_hint}"
        load = lambda: datasets.load_dataset(builder, data_files=str(file), split="train", streaming=streaming)  # noqa: E731
    else:
        failed = f"{name}: loading {hub_id} from the hub failed ({{reason}}); {fix}"
        load = lambda: datasets.load_dataset(hub_id, config, split=split, streaming=streaming)  # noqa: E731
    offline = f"{name} needs the Hugging Face hub ({{where}}); {fix}"
    with _one_line(failed, offline):
        rows = load()
    return _guarded(rows, failed, offline) if streaming else rows


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


@contextmanager
def _one_line(failed: str, offline: str):
    """Turn what ``datasets`` raises into one :class:`ConfigError` line."""
    try:
        yield
    except ConfigError:
        raise
    except ConnectionError:
        where = "offline here: HF_HUB_OFFLINE=1" if _offline() else "unreachable from here"
        raise ConfigError(offline.format(where=where)) from None
    except Exception as error:  # arrow, json, fsspec and hub errors come in many types
        raise ConfigError(failed.format(reason=_reason(error))) from None


def _guarded(rows: Iterable[dict[str, Any]], failed: str, offline: str) -> Iterator[dict[str, Any]]:
    """A streamed dataset reads lazily: its errors surface while iterating."""
    with _one_line(failed, offline):
        yield from rows


def check_columns(name: str, row: dict[str, Any], columns: tuple[str, ...], file_hint: str) -> None:
    missing = [column for column in columns if column not in row]
    if missing:
        raise ConfigError(f"{name}: rows lack column(s) {', '.join(missing)}; give a {file_hint}")
