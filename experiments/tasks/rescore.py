"""The ``rescore`` task: score a generate run's saved predictions and append its row, no decoding.

A generate run writes ``predictions.jsonl`` and ``decoded.json`` (its cost numbers and model) before
scoring; when scoring then fails, its one-line error names this task. The row is the one the run
would have written: the run's saved config (so the same ``config_hash``), its ``run_id``, its cost
numbers, and the scores computed now (``bertscore.*`` from the command line apply, for a scorer
fixed since).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from adore import ConfigError
from experiments.infra.results import read_rows
from experiments.infra.runtime import Run, policy_from_config
from experiments.infra.tasks import register_task
from experiments.tasks.generation import DECODED_FILE, _summary, score_and_finish


def _read_json(path: Path, fix: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path} is missing; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid JSON; {fix}") from None


@register_task("rescore", uses_model=False, summary=_summary, title="rescore")
def run_rescore(cfg: dict[str, Any]) -> dict[str, Any]:
    given = cfg["task"].get("run_dir")
    if not given:
        raise ConfigError("task=rescore needs the run's folder: task.run_dir=<results_dir>/runs/<run_id>")
    folder = Path(given)
    if not folder.is_dir():
        raise ConfigError(f"task.run_dir {given!r} is not a folder; give <results_dir>/runs/<run_id>")
    fix = "only a generate run's folder (from this version on) can be re-scored"
    saved = _read_json(folder / "config.json", fix)
    decoded = _read_json(folder / DECODED_FILE, fix)
    records = []
    lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if (
        folder / "predictions.jsonl").is_file() else []  # fmt: skip
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ConfigError(f"{folder / 'predictions.jsonl'} line {number} is not valid JSON; {fix}") from None
    if not records or len(records) != decoded["row"]["n_samples"]:
        raise ConfigError(f"{folder / 'predictions.jsonl'} lacks predictions; {fix}")
    results_dir = folder.parent.parent  # <results_dir>/runs/<run_id>, wherever the folder was moved
    if any(row.get("run_id") == folder.name for row in read_rows(results_dir, on_error="warn")):
        raise ConfigError(f"run {folder.name} already has a row in {results_dir / 'runs.jsonl'}; nothing to re-score")
    from experiments.infra.checks import check_bertscore

    saved = {**saved, "results_dir": str(results_dir), "bertscore": cfg.get("bertscore", saved.get("bertscore"))}
    check_bertscore(saved)
    run = Run(saved, task="generate", run_id=folder.name, started=time.perf_counter() - decoded["wall_s"])
    loaded = SimpleNamespace(**decoded["model"])
    return score_and_finish(run, policy_from_config(saved["method"], saved), loaded, records, decoded["row"])
