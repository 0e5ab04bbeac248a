"""The ``report`` task: result rows -> a Markdown table (the latest row per configuration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .results import read_rows

COLUMNS = (
    ("method", "method"), ("model", "model"), ("m", "m"), ("R", "R"), ("extra", "other parameters"),
    ("n_samples", "n"), ("rougeL", "ROUGE-L"), ("bertscore_f1", "BERTScore-F1"), ("bleu", "BLEU"),
    ("decode_tok_s", "decode tok/s"), ("kv_cache_mb", "KV MB"),
)  # fmt: skip
# Parameters shown in their own columns, or too long to be useful in a table.
_HIDDEN = {"m", "R", "controller", "controller_scorer", "chunk", "finetune"}


def latest_rows(rows: list[dict[str, Any]], task: str | None = "generate") -> list[dict[str, Any]]:
    """Keep the newest row of each (task, method, params, dataset, model, n_samples), in first-seen order."""
    latest: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if task and row.get("task") != task:
            continue
        key = (row.get("task"), row.get("method"), str(row.get("method_params")), row.get("dataset"),
               row.get("model"), row.get("n_samples"))  # fmt: skip
        latest.pop(key, None)
        latest[key] = row
    return list(latest.values())


def extra_params(row: dict[str, Any]) -> str:
    """The method's other parameters, compactly (``K=32 labels_horizon=8``)."""
    params = dict(row.get("method_params") or {})
    if row.get("method") == "adore" and params.get("scorer") == "controller":
        params.setdefault("labels_horizon", 1)  # rows from before the switch existed
    shown = {k: v for k, v in params.items() if k not in _HIDDEN and v is not None}
    return " ".join(f"{k}={v}" for k, v in shown.items()) or "-"


def sort_key(row: dict[str, Any]) -> tuple:
    """Model, then budget (full-cache methods last), then method, then R."""
    m = row.get("m")
    return (row.get("dataset") or "", row.get("model") or "", m is None, m or 0, row.get("method") or "",
            row.get("R") or 0, extra_params(row))  # fmt: skip


def _cell(row: dict[str, Any], key: str) -> str:
    value = extra_params(row) if key == "extra" else row.get(key)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row, key) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def run_report(cfg: dict[str, Any]) -> str:
    results_dir = Path(cfg["results_dir"])
    rows = sorted(latest_rows(read_rows(results_dir)), key=sort_key)
    if not rows:
        table = f"no generation rows in {results_dir / 'runs.jsonl'} yet; run `python run.py method=full` first"
    else:
        table = markdown_table(rows)
        (results_dir / "table.md").write_text(table + "\n")
    print(table)
    return table
