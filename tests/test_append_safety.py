"""runs.jsonl under stress: writers killed with SIGKILL, concurrent writers with rows larger than
PIPE_BUF, and a reader that names a corrupt line and skips it (report) or refuses it (strict)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from adore.errors import HarnessError
from experiments.results import append_row, make_row, read_rows
from tests.conftest import ROOT

# A writer that appends big rows (256 KB: many pages, so a SIGKILL can land inside one write) forever.
WRITER = """
import sys
from experiments.results import append_row, make_row
tag, results_dir = sys.argv[1], sys.argv[2]
print("ready", flush=True)
i = 0
while True:
    append_row(results_dir, make_row(run_id=f"{tag}-{i}", method="x" * 262144))
    i += 1
"""


def test_sigkill_mid_sweep_loses_no_written_row_and_leaves_no_torn_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(round_), str(tmp_path)], stdout=subprocess.PIPE, env=env
        )
        assert writer.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.1 * round_)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    append_row(tmp_path, make_row(run_id="after"))  # cuts a torn tail if the last kill left one
    data = (tmp_path / "runs.jsonl").read_bytes()
    assert data.endswith(b"\n")
    rows = read_rows(tmp_path)  # strict: raises on any torn or corrupt line
    ids = [row["run_id"] for row in rows]
    assert ids[-1] == "after"
    for round_ in range(3):
        mine = [i for i in ids if i.startswith(f"{round_}-")]
        assert mine == [f"{round_}-{n}" for n in range(len(mine))]  # no gap: every written row survived
    assert all(len(row["method"]) == 262144 for row in rows[:-1])


def test_a_torn_tail_is_cut_by_the_next_append_with_a_warning(tmp_path, capsys):
    append_row(tmp_path, make_row(run_id="a"))
    with (tmp_path / "runs.jsonl").open("a") as handle:
        handle.write('{"run_id": "killed", "method": "xx')  # what a write cut short by SIGKILL leaves
    assert [r["run_id"] for r in read_rows(tmp_path, on_error="warn")] == ["a"]
    assert "line 2 is not valid JSON" in capsys.readouterr().err
    with pytest.raises(HarnessError, match="line 2 .* has no newline: a writer was killed mid-write"):
        read_rows(tmp_path)
    append_row(tmp_path, make_row(run_id="b"))
    assert "dropped a torn last line (34 bytes)" in capsys.readouterr().err
    assert [r["run_id"] for r in read_rows(tmp_path)] == ["a", "b"]


def _append_many(results_dir: str, writer: int, rows: int, size: int) -> None:
    for i in range(rows):
        append_row(results_dir, make_row(run_id=f"{writer}-{i}", method=chr(ord("a") + writer) * size))


def test_concurrent_writers_never_interleave_rows_larger_than_pipe_buf(tmp_path):
    writers, rows, sizes = 4, 200, (8192, 70000)  # 8 KB and 70 KB rows, both above PIPE_BUF (4 KB)
    context = multiprocessing.get_context("fork")  # the children only write files
    processes = [
        context.Process(target=_append_many, args=(str(tmp_path), w, rows, sizes[w % 2])) for w in range(writers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    lines = (tmp_path / "runs.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == writers * rows + 1
    seen = set()
    for line in lines[:-1]:
        row = json.loads(line)  # an interleaved line would not parse
        writer = int(row["run_id"].split("-")[0])
        assert row["method"] == chr(ord("a") + writer) * sizes[writer % 2]
        seen.add(row["run_id"])
    assert len(seen) == writers * rows


def test_report_mode_names_and_skips_corrupt_lines_strict_mode_refuses(tmp_path, capsys):
    append_row(tmp_path, make_row(run_id="a"))
    with (tmp_path / "runs.jsonl").open("a") as handle:
        handle.write("not json\n[1, 2]\n\n")
    append_row(tmp_path, make_row(run_id="b"))
    assert [r["run_id"] for r in read_rows(tmp_path, on_error="warn")] == ["a", "b"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: {tmp_path / 'runs.jsonl'} line 2 is not valid JSON (Expecting value); skipped it (delete or repair that line)",
        f"warning: {tmp_path / 'runs.jsonl'} line 3 is not a JSON object; skipped it (delete or repair that line)",
    ]
    with pytest.raises(HarnessError, match="line 2 is not valid JSON"):
        read_rows(tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        read_rows(tmp_path, on_error="ignore")
