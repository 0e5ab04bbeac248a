"""Perplexity per window of N tokens of stream runs, from each run folder's per-token NLL (``nll.txt``),
or, where the run folders are gone (they are not committed), from the report's per-window table.

python scripts/stream_windows.py --window 1024 results/reference/runs/<run_id> [...]
python scripts/stream_windows.py --window 1024 --table results/reference/tables/stream_windows_gutenberg.csv --text hamlet
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python scripts/...` from anywhere

from experiments.tasks.streaming import window_perplexities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="stream run folders (results/<dir>/runs/<run_id>)")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument(
        "--table", type=Path, help="a report's tables/stream_windows_<dataset>.csv instead of run folders"
    )
    parser.add_argument("--text", help="with --table: only the streams of this text")
    args = parser.parse_args()
    if args.window <= 0:
        parser.error(f"--window must be positive, got {args.window}")
    if args.table is not None:
        if not args.table.is_file():
            parser.error(f"no file {args.table}; run `python run.py task=report results_dir=<dir>` first")
        print_table(args.table, args.window, args.text)
        return
    if not args.runs:
        parser.error("give stream run folders, or --table")
    for run in args.runs:
        if not (run / "nll.txt").is_file():
            parser.error(f"no nll.txt in {run}; give the folder of a task=stream run")
        config = json.loads((run / "config.json").read_text())
        nll = [float(value) for value in (run / "nll.txt").read_text().split()]
        label = f"{config['method']['name']} on {config['dataset'].get('book', config['dataset']['name'])}"
        values = " / ".join(f"{w['perplexity']:.1f}" for w in window_perplexities(nll, args.window))
        print(f"{label} ({run.name}), per {args.window} tokens: {values}")


def merge_windows(windows: list[dict[str, float]], window: int) -> list[dict[str, float]]:
    """Windows of a report's table (each ``start``, ``tokens``, ``perplexity``) merged into windows of
    ``window`` tokens: ``exp`` of the token-weighted mean NLL, as :func:`window_perplexities` gives
    from the per-token NLL (``window`` a multiple of the table's window size)."""
    merged: dict[int, tuple[int, float]] = {}
    for w in windows:
        index, count = int(w["start"]) // window, int(w["tokens"])
        tokens, summed = merged.get(index, (0, 0.0))
        merged[index] = (tokens + count, summed + count * math.log(w["perplexity"]))
    return [{"start": index * window, "tokens": tokens, "perplexity": math.exp(summed / tokens)}
            for index, (tokens, summed) in sorted(merged.items())]  # fmt: skip


def print_table(path: Path, window: int, text: str | None) -> None:
    runs: dict[str, list[dict]] = {}
    for row in csv.DictReader(path.open()):
        if text is None or row["text"] == text:
            runs.setdefault(row["run_id"], []).append(row)
    for run_id, rows in runs.items():
        windows = [
            {"start": float(r["start"]), "tokens": float(r["tokens"]), "perplexity": float(r["perplexity"])}
            for r in rows
        ]
        first = rows[0]
        label = (
            f"{first['method']} on {first['text']} ({first['params']}, {int(float(first['context_length']))} tokens)"
        )
        values = " / ".join(f"{w['perplexity']:.1f}" for w in merge_windows(windows, window))
        print(f"{label} ({run_id}), per {window} tokens: {values}")


if __name__ == "__main__":
    main()
