"""The report's paired comparisons: from per-sample scores in run folders, kept in
tables/samples_<dataset>.csv so they regenerate without the folders, and a method made worse is
told apart while an equal one is not."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from experiments.infra.results import append_row, make_row
from experiments.reporting.report import run_report

MODEL = "smollm2-135m"


def write_run(results_dir, method: str, m: int | None, rouge: np.ndarray, model: str = MODEL) -> None:
    run_dir = results_dir / "runs" / f"{method}-{m}-{model.replace('/', '_')}"
    run_dir.mkdir(parents=True)
    with (run_dir / "predictions.jsonl").open("w") as handle:
        for i, value in enumerate(rouge):
            scores = {"rouge1": value, "rouge2": value / 2, "rougeL": value, "bertscore_f1": 40 + value,
                      "sentence_bleu": value / 3}  # fmt: skip
            handle.write(json.dumps({"id": f"paper-{i}", "prediction": "p", "reference": "r", "scores": scores}) + "\n")
    append_row(results_dir, make_row(
        run_id=run_dir.name, task="generate", method=method, method_params={"m": m}, m=m, dataset="aclsum",
        n_samples=len(rouge), model=model, rougeL=float(rouge.mean()), bertscore_f1=40 + float(rouge.mean()),
        run_dir=str(run_dir),
    ))  # fmt: skip


def test_paired_tables_separate_a_worse_method_and_survive_without_run_folders(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.uniform(10, 40, size=48)
    window = full - 6 + rng.normal(0, 1, size=48)  # clearly worse
    write_run(tmp_path, "full", None, full)
    write_run(tmp_path, "h2o", 32, full + rng.normal(0, 1, size=48))  # the same, with noise
    write_run(tmp_path, "window", 32, window)
    run_report({"results_dir": str(tmp_path), "task": {"name": "report", "reference": "h2o"}})

    paired = pd.read_csv(tmp_path / "tables" / "paired_aclsum.csv")
    rouge = paired[paired["metric"] == "rougeL"].set_index(["method", "versus"])
    assert rouge.loc[("window", "full"), "significant"] and rouge.loc[("window", "h2o"), "significant"]
    assert not rouge.loc[("h2o", "full"), "significant"]
    assert rouge.loc[("window", "full"), "ci_hi"] < 0 < rouge.loc[("h2o", "full"), "ci_hi"]
    assert rouge.loc[("window", "full"), "difference"] == pytest.approx(float(np.mean(window - full)))
    assert (rouge["n"] == 48).all()
    markdown = (tmp_path / "tables" / "paired_aclsum.md").read_text()
    assert "no detectable difference" in markdown and "detectable:" in markdown

    before = paired.to_csv(index=False)
    shutil.rmtree(tmp_path / "runs")  # run folders are not committed
    run_report({"results_dir": str(tmp_path), "task": {"name": "report", "reference": "h2o"}})
    assert pd.read_csv(tmp_path / "tables" / "paired_aclsum.csv").to_csv(index=False) == before


def test_base_and_adapter_views_never_share_a_cell(tmp_path):
    """The same method and budget on the base model and on an adapter: the main table and the paired
    table keep a part per model, each compared only with its own model's runs."""
    adapted = f"{MODEL}+lora:K32-abc/adapter"
    full = np.linspace(10, 40, 32)
    write_run(tmp_path, "full", None, full)
    write_run(tmp_path, "window", 32, full - 5)
    write_run(tmp_path, "full", None, full + 10, model=adapted)
    write_run(tmp_path, "window", 32, full + 8, model=adapted)
    run_report({"results_dir": str(tmp_path), "task": {"name": "report", "reference": "h2o"}})

    main = (tmp_path / "tables" / "main_aclsum.md").read_text().split("\n\n")
    assert main[0] == f"ROUGE-L on aclsum, {MODEL}, n=32"
    assert main[2] == f"ROUGE-L on aclsum, {adapted}, n=32"
    assert main[1].splitlines()[3].startswith(f"| window | {np.mean(full - 5):.2f} |")
    assert main[3].splitlines()[3].startswith(f"| window | {np.mean(full + 8):.2f} |")
    paired = pd.read_csv(tmp_path / "tables" / "paired_aclsum.csv")
    rouge = paired[paired["metric"] == "rougeL"].set_index("model")["difference"]
    assert rouge[MODEL] == pytest.approx(-5.0) and rouge[adapted] == pytest.approx(-2.0)
    markdown = (tmp_path / "tables" / "paired_aclsum.md").read_text()
    assert markdown.startswith(f"Model: {MODEL}\n\n|") and f"\n\nModel: {adapted}\n\n|" in markdown


def test_stream_runs_are_paired_window_by_window(tmp_path):
    """Stream rows on the same text and length: each method against full and the reference at the
    same m, over the windows both have; the change of perplexity matches the windows by hand."""
    rng = np.random.default_rng(1)
    starts = range(0, 48 * 256, 256)
    full = rng.uniform(2.5, 3.5, size=48)  # mean NLL per window
    runs = {"full": (None, full), "h2o": (128, full + 0.30), "window": (128, full + 1.0),
            "adore": (128, full + 0.30 + rng.normal(0, 0.02, size=48))}  # fmt: skip
    for method, (m, nll) in runs.items():
        run_dir = tmp_path / "runs" / f"stream-{method}"
        run_dir.mkdir(parents=True)
        windows = [{"start": s, "tokens": 256, "perplexity": math.exp(v)} for s, v in zip(starts, nll, strict=True)]
        (run_dir / "windows.json").write_text(json.dumps(windows))
        append_row(tmp_path, make_row(
            run_id=run_dir.name, task="stream", method=method, method_params={"m": m}, m=m, dataset="gutenberg",
            text="hamlet", context_length=48 * 256, n_samples=1, model=MODEL, perplexity=math.exp(float(nll.mean())),
            run_dir=str(run_dir),
        ))  # fmt: skip
    run_report({"results_dir": str(tmp_path), "task": {"name": "report", "reference": "h2o"}})

    paired = pd.read_csv(tmp_path / "tables" / "paired_stream_gutenberg.csv").set_index(["method", "versus"])
    assert sorted(paired.index) == [("adore", "full"), ("adore", "h2o"), ("h2o", "full"), ("window", "full"),
                                    ("window", "h2o")]  # fmt: skip
    by_hand = 100 * (math.exp(float(np.mean(runs["window"][1] - full))) - 1)
    assert paired.loc[("window", "full"), "change_pct"] == pytest.approx(by_hand)
    # 48 windows of 256 tokens, resampled in runs of 4 (1,024 tokens): 12 blocks.
    assert paired.loc[("window", "full"), "windows"] == 48 and paired.loc[("window", "full"), "blocks"] == 12
    assert (
        paired.loc[("window", "h2o"), "significant"] and paired.loc[("window", "h2o"), "versus_run_id"] == "stream-h2o"
    )
    assert not paired.loc[("adore", "h2o"), "significant"]
    assert paired.loc[("adore", "h2o"), "ci_lo"] < 0 < paired.loc[("adore", "h2o"), "ci_hi"]
    markdown = (tmp_path / "tables" / "paired_stream_gutenberg.md").read_text()
    assert markdown.startswith(f"Model: {MODEL}\n\n| text | tokens |") and "detectable %" in markdown

    shutil.rmtree(tmp_path / "runs")  # the committed windows table stands in for the run folders
    before = (tmp_path / "tables" / "paired_stream_gutenberg.csv").read_text()
    run_report({"results_dir": str(tmp_path), "task": {"name": "report", "reference": "h2o"}})
    assert (tmp_path / "tables" / "paired_stream_gutenberg.csv").read_text() == before
