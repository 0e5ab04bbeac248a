"""The ``report`` task: result rows -> a Markdown table (the latest row per configuration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .results import read_rows

DEFAULT_COLUMNS = (
    "method", "params", "dataset", "n_samples", "rougeL", "bertscore_f1", "bleu", "decode_tok_s", "kv_cache_mb",
)  # fmt: skip


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


def _params(row: dict[str, Any]) -> str:
    """``m=128 heavy_ratio=0.5``: the method's parameters, compactly."""
    params = row.get("method_params") or {}
    return " ".join(f"{k}={v}" for k, v in params.items() if v is not None) or "-"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = DEFAULT_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += [
        "| " + " | ".join(_params(row) if c == "params" else _cell(row.get(c)) for c in columns) + " |" for row in rows
    ]
    return "\n".join(lines)


def run_report(cfg: dict[str, Any]) -> str:
    results_dir = Path(cfg["results_dir"])
    rows = latest_rows(read_rows(results_dir))
    if not rows:
        table = f"no generation rows in {results_dir / 'runs.jsonl'} yet; run `python run.py method=full` first"
    else:
        table = markdown_table(rows)
        (results_dir / "table.md").write_text(table + "\n")
    print(table)
    return table
