"""Result rows: one JSON line per run in ``<results_dir>/runs.jsonl``, written atomically.

Each row has exactly :data:`ROW_KEYS` (throughput rows add :data:`THROUGHPUT_KEYS`; math and
StreamEval rows add :data:`ACCURACY_KEY`); metrics that do not apply are ``null``. A line is written
with a single ``write`` on a file opened for appending, under an exclusive lock, and then fsync-ed:
concurrent writers never interleave, a torn tail left by a killed writer is cut by the next append,
and complete rows are never rewritten (see :func:`append_row`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adore import HarnessError

ROW_KEYS = (
    "run_id", "timestamp", "git_commit", "config_hash", "task", "method", "method_params", "m", "R",
    "dataset", "n_samples", "model", "device", "dtype", "bleu", "rouge1", "rouge2", "rougeL",
    "bertscore_f1", "bertscore_model", "perplexity", "prefill_tok_s", "decode_tok_s",
    "ms_per_token_p50", "ms_per_token_p90", "peak_mem_mb", "kv_cache_mb", "wall_s", "run_dir",
)  # fmt: skip
THROUGHPUT_KEYS = ("context_length", "batch_size")  # stream rows give context_length too: the tokens streamed
ACCURACY_KEY = "accuracy"  # optional: exact-match accuracy in percent (math datasets, StreamEval)
# Optional: which text of the dataset a stream row streamed (the sample's id, e.g. "hamlet"). One
# dataset holds many texts, and rows of different texts must never share a table line or a curve.
STREAMED_TEXT_KEY = "text"
# Optional, present (true) only on rows whose prompts or stream went past the model's
# max_position_embeddings: a legitimate experiment, but its numbers are not the trained model's.
BEYOND_POSITIONS_KEY = "beyond_trained_positions"
# Optional: the 95% bootstrap interval [lo, hi] beside a quality metric (experiments/stats.py), and
# the spread of decode speed over repeats (p10, p90 of tokens/s).
CI_KEYS = ("bleu_ci", "rouge1_ci", "rouge2_ci", "rougeL_ci", "bertscore_f1_ci", "accuracy_ci", "perplexity_ci")
SPREAD_KEYS = ("decode_tok_s_p10", "decode_tok_s_p90")
# Optional: the most KV bytes reserved at any moment of the decode steps (kv_cache_mb is the same with
# the prefill included), and a throughput row's weight-sweep floor of its batch with the step's
# median time over it.
COST_KEYS = ("kv_decode_mb", "floor_ms", "step_over_floor")
# Optional: how torch's CPU threads ran a speed row (the wait policy alone moves a step by half).
THREAD_KEYS = ("cpu_threads", "omp_wait_policy")
# Row keys whose values must be numbers (or null): the report sorts and plots them.
NUMBER_KEYS = (
    "m", "R", "n_samples", "bleu", "rouge1", "rouge2", "rougeL", "bertscore_f1", "perplexity", "prefill_tok_s",
    "decode_tok_s", "ms_per_token_p50", "ms_per_token_p90", "peak_mem_mb", "kv_cache_mb", "wall_s",
    *THROUGHPUT_KEYS, ACCURACY_KEY, *COST_KEYS, "cpu_threads",
)  # fmt: skip
TEXT_KEYS = ("task", "method", "dataset", "model", STREAMED_TEXT_KEY, "omp_wait_policy")
# Config keys added after rows were written, at the default that keeps the earlier behaviour: left out
# of the hash at that default, so earlier rows keep their hash.
# Settings added after rows were written: at these defaults (by key path) they leave a row's hash as
# it was, so the rows stay resumable.
HASH_NEUTRAL_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("adore", "train_dataset"): None,
    ("kv_budget_mb",): 2048,
    ("adore", "controller", "positions"): "absolute",
    ("adore", "controller", "cell"): "gru",
    ("method", "n_recent"): 0,  # ADORE's; no other method has a key of this name
    ("method", "reencode"): 0,  # ADORE's, likewise
    ("adore", "labels", "target"): "current",
}
RUNS_FILE = "runs.jsonl"
# Top-level keys that say where outputs go or whether to rerun, not what a run computes.
NOT_HASHED = ("results_dir", "hydra", "force")


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


def _legacy_layout(config: dict[str, Any]) -> dict[str, Any]:
    """The config as rows written before a method's settings moved into ``method.*`` saw it: each
    registered method's ``moved_settings`` section goes back to the top level, filled from the
    method's own keys when it is the run's method, else at the defaults it then had."""
    from adore.methods import METHODS  # the catalog: every method, registered

    method = config.get("method")
    if not isinstance(method, Mapping):
        return config
    for name, cls in METHODS.items():
        moved = getattr(cls, "moved_settings", None)
        if moved is None or moved[0] in config:
            continue
        section, defaults = moved
        if method.get("name") == name:
            config = {**config, "method": {k: v for k, v in method.items() if k not in defaults},
                      section: {k: method.get(k, v) for k, v in defaults.items()}}  # fmt: skip
        else:
            config = {**config, section: defaults}
    return config


def _without_default(config: Mapping[str, Any], path: tuple[str, ...], default: Any) -> Mapping[str, Any]:
    """``config`` without the key at ``path`` when it holds ``default`` (copies only along the path)."""
    head, *rest = path
    if not isinstance(config, Mapping) or head not in config:
        return config
    if rest:
        return {**config, head: _without_default(config[head], tuple(rest), default)}
    return {k: v for k, v in config.items() if k != head} if config[head] == default else config


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable hash of the settings that define a run's numbers (not where its outputs go)."""
    relevant = _legacy_layout({k: v for k, v in config.items() if k not in NOT_HASHED})
    for path, default in HASH_NEUTRAL_DEFAULTS.items():
        relevant = _without_default(relevant, path, default)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_row(**values: Any) -> dict[str, Any]:
    """A row with every key of :data:`ROW_KEYS` (missing ones ``None``), then the optional
    :data:`STREAMED_TEXT_KEY`, :data:`THROUGHPUT_KEYS`, :data:`ACCURACY_KEY`, :data:`BEYOND_POSITIONS_KEY`,
    :data:`CI_KEYS`, :data:`SPREAD_KEYS`, :data:`COST_KEYS` and :data:`THREAD_KEYS` that are given, in that order; unknown keys
    are an error."""
    optional = (STREAMED_TEXT_KEY, *THROUGHPUT_KEYS, ACCURACY_KEY, BEYOND_POSITIONS_KEY, *CI_KEYS, *SPREAD_KEYS,
                *COST_KEYS, *THREAD_KEYS)  # fmt: skip
    unknown = sorted(set(values) - set(ROW_KEYS) - set(optional))
    if unknown:
        raise KeyError(f"not result-row keys: {unknown}")
    row = {key: values.get(key) for key in ROW_KEYS}
    row.update({key: values[key] for key in optional if key in values})
    return row


def _lock(fd: int, operation: int) -> None:
    """``flock`` the file; file systems without locks fall back to ``O_APPEND`` alone (whole lines on a
    local disk, but not across NFS clients: see README "Sweeps and reports")."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, operation)


def _parses_as_row(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _drop_torn_tail(fd: int, path: Path) -> None:
    """Make the file end with a newline before appending, losing no row.

    An unterminated last line that does not parse is torn: only a writer killed inside its ``write``
    leaves one (Linux stops a large write between pages on SIGKILL), since writers hold the lock for
    a whole line; it is cut. An unterminated last line that *does* parse is a complete row whose
    newline was lost (a hand edit, a merge, ``echo -n``): it gets its newline and stays.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    cut, block = size, 1 << 16
    while cut > 0:
        start = max(0, cut - block)
        newline = os.pread(fd, cut - start, start).rfind(b"\n")
        if newline >= 0:
            cut = start + newline + 1
            break
        cut = start
    if _parses_as_row(os.pread(fd, size - cut, cut)):
        os.write(fd, b"\n")  # O_APPEND: lands at the end, after the row
        print(f"warning: {path}: the last row had no final newline; added it (the row is kept)", file=sys.stderr)
        return
    os.ftruncate(fd, cut)
    print(
        f"warning: {path}: dropped a torn last line ({size - cut} bytes) left by a writer killed mid-write; "
        "the rows before it are intact",
        file=sys.stderr,
    )


#: Where this process appended rows (``run.py`` names them when a run is interrupted).
WRITTEN: list[Path] = []


def append_row(results_dir: str | Path, row: Mapping[str, Any]) -> Path:
    """Append one row to ``runs.jsonl`` as one whole line, then fsync.

    The line goes out in a single ``write`` on a file opened with ``O_APPEND``, under an exclusive
    ``flock``, so concurrent writers (parallel launchers) never interleave bytes, whatever the row's
    size. A writer killed mid-write (SIGKILL can cut a multi-page write short) leaves an unterminated
    tail, which the next append cuts off before writing: no torn line survives, no complete row is lost.
    """
    path = Path(results_dir) / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = memoryview((json.dumps(row, sort_keys=False, allow_nan=False, default=str) + "\n").encode())
    # Ctrl-C and SIGTERM wait until the line is written and synced (their handlers run right after):
    # an interrupted run never leaves half a row, and a finished row is never lost to the signal.
    deferred = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _lock(fd, fcntl.LOCK_EX)
            _drop_torn_tail(fd, path)
            while line:  # one write for a whole line, unless the kernel returns a short count
                line = line[os.write(fd, line) :]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        WRITTEN.append(path)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return path


def read_rows(results_dir: str | Path, on_error: str = "raise") -> list[dict[str, Any]]:
    """All rows of ``runs.jsonl``, read under a shared lock (no half-written row from a live writer).

    A corrupt line is named by its number. ``on_error="raise"`` (the default, for callers that must
    not go on with a damaged file) raises :class:`HarnessError`; ``on_error="warn"`` (the report and
    the sweep's resume check) prints one warning line on stderr and skips that line.
    """
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
    path = Path(results_dir) / RUNS_FILE
    if not path.exists():
        return []
    with path.open("rb") as handle:
        _lock(handle.fileno(), fcntl.LOCK_SH)
        data = handle.read()
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        problem = None
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            problem = f"is not valid JSON ({error.msg})"
        else:
            problem = row_problem(row)
        if problem is None:
            rows.append(row)
            continue
        if number == len(lines) and not data.endswith(b"\n"):
            problem += " and has no newline: a writer was killed mid-write; the next append removes it"
        if on_error == "raise":
            raise HarnessError(f"{path} line {number} {problem}; delete or repair that line, other rows are intact")
        print(f"warning: {path} line {number} {problem}; skipped it (delete or repair that line)", file=sys.stderr)
    return rows


def row_problem(row: Any) -> str | None:
    """Why a parsed line is not a row the report can use (``None`` when it is): not an object, none
    of the row keys, or a value of the wrong kind (``m="sixteen"`` would break sorting and plots)."""
    if not isinstance(row, dict):
        return "is not a JSON object"
    if not any(key in row for key in ROW_KEYS):
        return f"has none of the row keys ({', '.join(ROW_KEYS[:6])}, ...): not a result row"
    for key in NUMBER_KEYS:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"has {key}={json.dumps(value)}, not a number"
    for key in TEXT_KEYS:
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            return f"has {key}={json.dumps(value)}, not text"
    if row.get("method_params") is not None and not isinstance(row["method_params"], dict):
        return f"has method_params={json.dumps(row['method_params'])}, not an object"
    return None


def clean_number(value: float | None, digits: int = 4) -> float | None:
    """Round for the row; NaN/inf become ``None`` (JSON has no NaN)."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return round(float(value), digits)
