"""Result rows: one JSON line per run in ``<results_dir>/runs.jsonl``, written atomically.

Each row has exactly :data:`ROW_KEYS` (throughput rows add :data:`THROUGHPUT_KEYS`; math and
StreamEval rows add :data:`ACCURACY_KEY`); metrics that do not apply are ``null``. A line is written
with a single ``write`` on a file opened for appending and then fsync-ed, so a crash or a kill never
leaves half a line, and rows already written are never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adore.errors import HarnessError

ROW_KEYS = (
    "run_id", "timestamp", "git_commit", "config_hash", "task", "method", "method_params", "m", "R",
    "dataset", "n_samples", "model", "device", "dtype", "bleu", "rouge1", "rouge2", "rougeL",
    "bertscore_f1", "bertscore_model", "perplexity", "prefill_tok_s", "decode_tok_s",
    "ms_per_token_p50", "ms_per_token_p90", "peak_mem_mb", "kv_cache_mb", "wall_s", "run_dir",
)  # fmt: skip
THROUGHPUT_KEYS = ("context_length", "batch_size")
ACCURACY_KEY = "accuracy"  # optional: exact-match accuracy in percent (math datasets, StreamEval)
# Config keys added after rows were written, at the default that keeps the earlier behaviour: left out
# of the hash at that default, so earlier rows keep their hash.
HASH_NEUTRAL_DEFAULTS = {("adore", "train_dataset"): None}
RUNS_FILE = "runs.jsonl"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def git_commit() -> str | None:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it (``None`` outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return head + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable hash of the settings that define a run's numbers (not where its outputs go)."""
    relevant = {k: v for k, v in config.items() if k not in ("results_dir", "hydra")}
    for (section, key), default in HASH_NEUTRAL_DEFAULTS.items():
        if isinstance(relevant.get(section), Mapping) and relevant[section].get(key, default) == default:
            relevant[section] = {k: v for k, v in relevant[section].items() if k != key}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_row(**values: Any) -> dict[str, Any]:
    """A row with every key of :data:`ROW_KEYS` (missing ones ``None``), then the optional
    :data:`THROUGHPUT_KEYS` and :data:`ACCURACY_KEY` that are given; unknown keys are an error."""
    optional = (*THROUGHPUT_KEYS, ACCURACY_KEY)
    unknown = sorted(set(values) - set(ROW_KEYS) - set(optional))
    if unknown:
        raise KeyError(f"not result-row keys: {unknown}")
    row = {key: values.get(key) for key in ROW_KEYS}
    row.update({key: values[key] for key in optional if key in values})
    return row


def append_row(results_dir: str | Path, row: Mapping[str, Any]) -> Path:
    """Append one row to ``runs.jsonl`` with a single write, then fsync."""
    path = Path(results_dir) / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=False, allow_nan=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of ``runs.jsonl``; a corrupt line is reported with its number and how to fix it."""
    path = Path(results_dir) / RUNS_FILE
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise HarnessError(
                f"{path} line {number} is not valid JSON ({error.msg}); delete or repair that line, other rows are intact"
            ) from None
        if not isinstance(row, dict):
            raise HarnessError(f"{path} line {number} is not a JSON object; delete or repair that line")
        rows.append(row)
    return rows


def clean_number(value: float | None, digits: int = 4) -> float | None:
    """Round for the row; NaN/inf become ``None`` (JSON has no NaN)."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return round(float(value), digits)
