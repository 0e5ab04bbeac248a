"""run.py end to end: a real run writes a row and predictions; bad input gives one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.results import ROW_KEYS
from tests.conftest import METHOD_FILES, ROOT


def run_cli(*args: str, results_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args, f"results_dir={results_dir}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["method=nope"], f"error: unknown method 'nope'; choose one of: {METHOD_FILES} (files in conf/method/)"),
        (["dataset=nope"], "error: unknown dataset 'nope'; choose one of: aclsum"),
        (["method=h2o", "method.m=0"], "error: method.m must be a positive integer, got 0"),
        (["method=window", "method.m=-5"], "error: method.m must be a positive integer, got -5"),
        (["method=streaming_llm", "method.m=4"], "error: method.m=4 must be larger than the 4 sink tokens"),
        (["method=topk", "method.K=0"], "error: method.K must be a positive integer"),
        (["method=window", "method.R=3"], "error: method 'window' has no parameter 'R'"),
        (["model.path=/no/such/model"], "error: model path '/no/such/model' has no config.json"),
        (["max_new_tokens=0"], "error: max_new_tokens must be positive"),
        (["task=throughput", "task.context_lengths=[0]"], "error: task.context_lengths must be a list of positive"),
        (["task=throughput", "task.methods=[full,nope]"], "error: unknown method 'nope' in task.methods"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli(*args, "dataset.limit=1", results_dir=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.model
def test_generate_run_writes_row_and_predictions(tmp_path):
    result = run_cli("method=h2o", "method.m=32", "dataset.limit=2", "max_new_tokens=8", results_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    intervals = ("bleu_ci", "rouge1_ci", "rouge2_ci", "rougeL_ci", "bertscore_f1_ci")
    assert tuple(row) == ROW_KEYS + intervals + ("kv_decode_mb",)
    assert 0 < row["kv_decode_mb"] < row["kv_cache_mb"]  # the prefill held a whole ACLSum paper in a layer
    assert all(row[k][0] <= row[k.removesuffix("_ci")] <= row[k][1] for k in intervals if k != "bleu_ci")
    assert row["method"] == "h2o" and row["m"] == 32 and row["n_samples"] == 2
    assert row["method_params"] == {"m": 32, "heavy_ratio": 0.5}
    assert 0 <= row["rougeL"] <= 100 and 0 <= row["bertscore_f1"] <= 100 and row["decode_tok_s"] > 0
    assert row["kv_cache_mb"] > 0 and row["perplexity"] is None
    run_dir = Path(row["run_dir"])
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == ["E09-1056", predictions[1]["id"]] and len(predictions) == 2
    assert set(predictions[0]) == {"id", "prediction", "reference", "scores"}
    mean_rouge = sum(p["scores"]["rougeL"] for p in predictions) / 2
    assert mean_rouge == pytest.approx(row["rougeL"], abs=1e-3)  # the row aggregates the per-sample scores
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == {"name": "h2o", "m": 32, "heavy_ratio": 0.5}

    # A corrupt results file: the report names the line and skips it; nothing already written is lost.
    with (tmp_path / "runs.jsonl").open("a") as handle:
        handle.write("{torn\n")
    before = (tmp_path / "runs.jsonl").read_text()
    report = run_cli("task=report", results_dir=tmp_path)
    assert report.returncode == 0 and "line 2 is not valid JSON" in report.stderr and "skipped" in report.stderr
    assert "| h2o | smollm2-135m | 32 |" in report.stdout
    assert (tmp_path / "runs.jsonl").read_text() == before


@pytest.mark.model
def test_parity_task_reports_equal_tokens_and_two_rows(tmp_path):
    result = run_cli("task=parity", "dataset.limit=1", "max_new_tokens=6", results_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "greedy tokens equal on 1/1 prompts" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["task"], r["method"]) for r in rows] == [("parity", "hf_generate"), ("parity", "full")]
    assert all(r["decode_tok_s"] > 0 for r in rows)


def test_adore_without_controller_and_training_disabled_is_one_line(tmp_path):
    result = run_cli(
        "method=adore", "method.train_if_missing=false", f"method.artifacts_dir={tmp_path / 'none'}",
        "dataset.limit=1", results_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no ADORE controller at ")
    assert "task=train method=adore" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.model
def test_stream_task_writes_nll_windows_and_plot(tmp_path):
    text = tmp_path / "book.txt"
    text.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 4)
    result = run_cli(
        "task=stream", "method=window", "method.m=16", "dataset=text", f"dataset.path={text}",
        "dataset.max_tokens=40", "task.window=16", results_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert row["task"] == "stream" and row["perplexity"] > 1 and row["rougeL"] is None
    assert row["text"] == "book" and row["context_length"] == 40  # what was streamed: the file, 40 tokens
    assert row["perplexity_ci"] is None  # 39 tokens are fewer than two 64-token blocks: no interval
    run_dir = Path(row["run_dir"])
    assert len((run_dir / "nll.txt").read_text().split()) == 39
    assert [w["start"] for w in json.loads((run_dir / "windows.json").read_text())] == [0, 16, 32]
    assert (run_dir / "perplexity.png").stat().st_size > 0


@pytest.mark.model
def test_batch_size_auto_decodes_what_batch_size_1_does(tmp_path):
    """batch_size=auto packs prompts by a KV budget (100 MB: two ACLSum papers of ~1k tokens at most);
    the tokens are those of one prompt at a time."""
    common = ("method=window", "method.m=64", "dataset.limit=3", "max_new_tokens=6")
    predictions = {}
    for batch in ("1", "auto"):
        folder = tmp_path / batch
        result = run_cli(*common, f"batch_size={batch}", "kv_budget_mb=100", results_dir=folder)
        assert result.returncode == 0, result.stderr[-3000:]
        (row,) = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
        lines = (Path(row["run_dir"]) / "predictions.jsonl").read_text().splitlines()
        predictions[batch] = [json.loads(line)["prediction"] for line in lines]
    assert predictions["auto"] == predictions["1"]
