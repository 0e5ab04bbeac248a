"""Complete result rows written before rows carried a field, from what their runs left behind:

* ``stream``: a stream row's ``text`` (the sample's id) and ``context_length`` (the tokens streamed),
  from its run folder's ``config.json`` (``dataset.book`` of a ``test`` split: the one work streamed,
  whose id is the book's name) and ``nll.txt`` (one line per predicted token: the tokens streamed
  less one);
* ``controller``: an ADORE row's ``train_sequences`` and ``train_epochs`` (in ``method_params``: how
  many sequences its controller trained on, and over how many epochs), from the controller's
  ``training.json`` under ``--artifacts``. Without them two controllers trained on sequences of one
  length but on different amounts of text or steps read alike in every table (only the checkpoint's
  hash, which tables hide, tells them apart). A value the row has is kept.

    python scripts/backfill_rows.py results/reference results/stream-val-long ... [--artifacts artifacts]

Rows that cannot be traced (run folder or artifacts gone, another split, a dataset whose sample ids
are not its ``book``: PG19 names books by title) are left as they are and listed. The file is
rewritten in place under the writers' lock (appends from a live sweep wait, and none is lost), after
a copy to ``runs.jsonl.bak``; a damaged line stays exactly as it was (the report names it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adore.release.artifacts import training_amount  # noqa: E402
from experiments.infra.results import RUNS_FILE, STREAMED_TEXT_KEY  # noqa: E402

BOOK_IS_THE_ID = ("gutenberg", "text")  # datasets whose streamed sample is named after dataset.book

# A filler: whether a row lacks its field, and the row completed (None: not traceable).
Filler = tuple[Callable[[dict], bool], Callable[[dict], dict | None]]


def _run_config(row: dict, results_dir: Path) -> tuple[Path, dict] | None:
    """The run folder of ``row`` and its ``config.json``, where the folder is still there."""
    folders = [Path(row["run_dir"])] if row.get("run_dir") else []
    folders.append(results_dir / "runs" / str(row.get("run_id")))
    for folder in folders:
        if (folder / "config.json").is_file():
            return folder, json.loads((folder / "config.json").read_text())
    return None


def streamed(row: dict, results_dir: Path) -> dict | None:
    """The text and length a stream row streamed, read from its run folder; ``None`` when unknown."""
    run = _run_config(row, results_dir)
    if run is None or not (run[0] / "nll.txt").is_file():
        return None
    folder, config = run
    dataset = config.get("dataset") or {}
    if dataset.get("name") not in BOOK_IS_THE_ID or dataset.get("split", "test") != "test":
        return None
    tokens = len((folder / "nll.txt").read_text().split()) + 1  # the first token is predicted by none
    return {STREAMED_TEXT_KEY: str(dataset.get("book")), "context_length": tokens}


def training_report(row: dict, results_dir: Path, artifacts: Path) -> dict | None:
    """The ``training.json`` of the controller an ADORE row ran with: the folder named by its
    checkpoint, trained on the run's training dataset (its config's ``method.train_dataset``, else
    its dataset) for its model (an adapted model's name starts with its base model's)."""
    checkpoint = (row.get("method_params") or {}).get("controller_checkpoint")
    run = _run_config(row, results_dir)
    method = (run[1].get("method") or {}) if run else {}
    dataset = method.get("train_dataset") or row.get("dataset")
    reports = [json.loads(path.read_text()) for path in artifacts.glob(f"adore/*/{dataset}/{checkpoint}/training.json")]
    matching = [r for r in reports if str(row.get("model", "")).startswith(str(r.get("model")))]
    return matching[0] if len(matching) == 1 else None


def stream_filler(results_dir: Path) -> Filler:
    def lacks(row: dict) -> bool:
        return row.get("task") == "stream" and not row.get("context_length")

    def fill(row: dict) -> dict | None:
        stream = streamed(row, results_dir)
        return None if stream is None else {**row, **stream}

    return lacks, fill


def controller_filler(results_dir: Path, artifacts: Path) -> Filler:
    def lacks(row: dict) -> bool:
        params = row.get("method_params") or {}
        return (
            row.get("method") == "adore"
            and bool(params.get("controller_checkpoint"))
            and not {"train_sequences", "train_epochs"} <= params.keys()
        )

    def fill(row: dict) -> dict | None:
        report = training_report(row, results_dir, artifacts)
        amount = {} if report is None else training_amount(report)
        if not amount or amount.keys() <= row["method_params"].keys():
            return None
        added = {key: value for key, value in amount.items() if key not in row["method_params"]}
        return {**row, "method_params": {**row["method_params"], **added}}

    return lacks, fill


def backfill(results_dir: Path, fillers: list[Filler]) -> tuple[int, list[str]]:
    """Complete every row that lacks a filler's field and can be traced: (rows completed, run ids left)."""
    path = results_dir / RUNS_FILE
    completed, left = 0, []
    with path.open("r+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        out = []
        for line in handle.read().decode().splitlines(keepends=True):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                out.append(line)
                continue
            changed = False
            for lacks, fill in fillers:
                if not isinstance(row, dict) or not lacks(row):
                    continue
                filled = fill(row)
                if filled is None:
                    left.append(str(row.get("run_id")))
                else:
                    row, changed = filled, True
            if changed:
                line = json.dumps(row, allow_nan=False, default=str) + "\n"
                completed += 1
            out.append(line)
        if completed:
            shutil.copyfile(path, path.with_name(RUNS_FILE + ".bak"))
            handle.seek(0)
            handle.write("".join(out).encode())
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
    return completed, left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", nargs="+", type=Path)
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="where ADORE's controllers are")
    args = parser.parse_args()
    for results_dir in args.results_dirs:
        if not (results_dir / RUNS_FILE).is_file():
            sys.exit(f"no {RUNS_FILE} in {results_dir}; pass a results folder")
        fillers = [stream_filler(results_dir), controller_filler(results_dir, args.artifacts)]
        completed, left = backfill(results_dir, fillers)
        print(f"{results_dir}: completed {completed} rows" + (f"; not traceable: {sorted(set(left))}" if left else ""))


if __name__ == "__main__":
    main()
