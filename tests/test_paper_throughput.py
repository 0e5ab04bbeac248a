"""scripts/paper_throughput.py (the paper's GPU setting) at a toy size on CPU: every method runs at
every context, rows name the device, and the gain is the paper's formula over full at its own batch."""

from __future__ import annotations

import json
import runpy

import pytest

from tests.conftest import ROOT


def test_toy_run_writes_rows_table_and_figure(tmp_path):
    script = runpy.run_path(str(ROOT / "scripts" / "paper_throughput.py"))
    script["main"](["--toy", "--device", "cpu", "--out", str(tmp_path), "--new-tokens", "5", "--contexts", "40"])
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    labels = [spec.label for spec in script["METHODS"]]
    assert [(r["method"], r["batch_size"]) for r in rows] == [(label, b) for label in labels for b in (1, 2)]
    assert all(r["device"] == "cpu" and r["decode_tok_s"] > 0 for r in rows)
    # Bounded methods reserve m + the step's tokens per layer, full the whole sequence (m=128 > 40: all).
    full = next(r for r in rows if r["method"] == "full" and r["batch_size"] == 2)
    assert full["kv_decode_mb"] == pytest.approx(2 * (40 + 5) * 2 * 2 * 64 * 4 / 2**20, abs=0.05)
    best = script["gains"](rows)
    speed = {r["method"]: r["decode_tok_s"] for r in best}
    for row in best:
        assert row["batch_size"] == 2
        assert row["gain_percent"] == pytest.approx((speed[row["method"]] / speed["full"] - 1) * 100, abs=0.06)
    assert (tmp_path / "throughput.png").is_file() and "gain over full" in (tmp_path / "table.md").read_text()


def test_only_running_out_of_memory_ends_the_batch_search():
    script = runpy.run_path(str(ROOT / "scripts" / "paper_throughput.py"))
    assert script["_out_of_memory"](RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not script["_out_of_memory"](RuntimeError("shape mismatch"))
