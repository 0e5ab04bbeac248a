"""scripts/stream_windows.py: windows of a report's table merged into longer ones give what the
per-token NLL gives directly."""

from __future__ import annotations

import math
import random
import runpy

import pytest

from experiments.tasks.streaming import window_perplexities
from tests.conftest import ROOT


def test_merged_table_windows_equal_windows_of_the_per_token_nll():
    merge = runpy.run_path(str(ROOT / "scripts" / "stream_windows.py"))["merge_windows"]
    rng = random.Random(0)
    nll = [rng.uniform(0.5, 6.0) for _ in range(2 * 1024 + 300)]  # a short last window, like a stream's end
    merged = merge(window_perplexities(nll, 256), 1024)
    direct = window_perplexities(nll, 1024)
    assert [(w["start"], w["tokens"]) for w in merged] == [(w["start"], w["tokens"]) for w in direct]
    for got, want in zip(merged, direct, strict=True):
        assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-12)
    # Not the plain mean of the windows' perplexities (that would weight the short window wrongly).
    last = window_perplexities(nll, 256)[-2:]
    assert merged[-1]["perplexity"] != pytest.approx(sum(w["perplexity"] for w in last) / 2, rel=1e-6)
    assert math.isfinite(merged[-1]["perplexity"])
