"""Name the stream on stream rows written before rows carried it: ``text`` (the sample's id) and
``context_length`` (the tokens streamed).

    python scripts/backfill_stream_rows.py results/reference results/stream-heldout ...

A stream row's text comes from its run folder's ``config.json`` (``dataset.book`` of a ``test``
split: the one work streamed, whose id is the book's name), its length from ``nll.txt`` (one line
per predicted token: the tokens streamed less one). Rows whose folder is gone, or that streamed
another split or a dataset whose sample ids are not its ``book`` (PG19 names books by title), are
left as they are and listed. The file is rewritten in place under the writers' lock
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


def streamed(row: dict, results_dir: Path) -> dict | None:
    """The text and length a stream row streamed, read from its run folder; ``None`` when unknown."""
    folders = [Path(row["run_dir"])] if row.get("run_dir") else []
    folders.append(results_dir / "runs" / str(row.get("run_id")))
    for folder in folders:
        config, nll = folder / "config.json", folder / "nll.txt"
        if config.is_file() and nll.is_file():
            dataset = json.loads(config.read_text()).get("dataset") or {}
            if dataset.get("name") in BOOK_IS_THE_ID and dataset.get("split", "test") == "test":
                tokens = len(nll.read_text().split()) + 1  # the first token is predicted by none
                return {STREAMED_TEXT_KEY: str(dataset.get("book")), "context_length": tokens}
            return None
    return None


def backfill(results_dir: Path) -> tuple[int, list[str]]:
    """Name the stream of every stream row that lacks it and can be traced: (rows named, run ids left)."""
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
            if isinstance(row, dict) and row.get("task") == "stream" and not row.get("context_length"):
                stream = streamed(row, results_dir)
                if stream is None:
                    left.append(str(row.get("run_id")))
                else:
                    row.update(stream)
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
        print(f"{results_dir}: named the stream of {named} rows" + (f"; not traceable: {left}" if left else ""))


if __name__ == "__main__":
    main()
