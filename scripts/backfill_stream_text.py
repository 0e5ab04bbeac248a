"""Name the streamed text on stream rows written before rows carried it (``text``, the sample's id).

    python scripts/backfill_stream_text.py results/reference results/stream-heldout ...

A stream row's text comes from its run folder's ``config.json`` (``dataset.book`` of a ``test``
split: the one work streamed, whose id is the book's name). Rows whose folder is gone, or that
streamed another split or a dataset whose sample ids are not its ``book`` (PG19 names books by
title), are left as they are and listed. The file is rewritten in place under the writers' lock
(appends from a live sweep wait, and none is lost), after a copy to ``runs.jsonl.bak``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.infra.results import RUNS_FILE, STREAMED_TEXT_KEY  # noqa: E402

BOOK_IS_THE_ID = ("gutenberg", "text")  # datasets whose streamed sample is named after dataset.book


def streamed_text(row: dict, results_dir: Path) -> str | None:
    """The text a stream row streamed, read from its run's config; ``None`` when it cannot be known."""
    folders = [Path(row["run_dir"])] if row.get("run_dir") else []
    folders.append(results_dir / "runs" / str(row.get("run_id")))
    for folder in folders:
        path = folder / "config.json"
        if path.is_file():
            dataset = json.loads(path.read_text()).get("dataset") or {}
            if dataset.get("name") in BOOK_IS_THE_ID and dataset.get("split", "test") == "test":
                return str(dataset.get("book"))
            return None
    return None


def backfill(results_dir: Path) -> tuple[int, list[str]]:
    """Add the text to every stream row that lacks it and can be traced: (rows named, run ids left)."""
    path = results_dir / RUNS_FILE
    named, left = 0, []
    with path.open("r+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        lines = handle.read().decode().splitlines(keepends=True)
        out = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                out.append(line)  # a damaged line stays exactly as it was (the report names it)
                continue
            if isinstance(row, dict) and row.get("task") == "stream" and not row.get(STREAMED_TEXT_KEY):
                text = streamed_text(row, results_dir)
                if text is None:
                    left.append(str(row.get("run_id")))
                else:
                    row[STREAMED_TEXT_KEY] = text
                    line = json.dumps(row, allow_nan=False, default=str) + "\n"
                    named += 1
            out.append(line)
        if named:
            shutil.copyfile(path, path.with_name(RUNS_FILE + ".bak"))
            handle.seek(0)
            handle.write("".join(out).encode())
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
    return named, left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", nargs="+", type=Path)
    for results_dir in parser.parse_args().results_dirs:
        if not (results_dir / RUNS_FILE).is_file():
            sys.exit(f"no {RUNS_FILE} in {results_dir}; pass a results folder")
        named, left = backfill(results_dir)
        print(f"{results_dir}: named the text of {named} stream rows" + (f"; not traceable: {left}" if left else ""))


if __name__ == "__main__":
    main()
