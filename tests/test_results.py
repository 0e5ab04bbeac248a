"""Result rows: every key present, atomic appends, corrupt files reported without losing rows."""

from __future__ import annotations

import json

import pytest

from adore.errors import HarnessError
from experiments.report import latest_rows, markdown_table
from experiments.results import ROW_KEYS, append_row, config_hash, make_row, read_rows


def test_rows_have_exactly_the_design_keys():
    row = make_row(method="h2o", m=64, bleu=1.5)
    assert tuple(row) == ROW_KEYS
    assert row["method"] == "h2o" and row["rouge1"] is None
    assert list(make_row(context_length=4096, batch_size=8))[-2:] == ["context_length", "batch_size"]
    with pytest.raises(KeyError, match="not result-row keys"):
        make_row(rouge_l=3.0)


def test_append_keeps_earlier_rows_and_reads_back(tmp_path):
    for i in range(3):
        append_row(tmp_path, make_row(run_id=str(i), method="window", m=8 * (i + 1)))
    rows = read_rows(tmp_path)
    assert [r["run_id"] for r in rows] == ["0", "1", "2"]
    assert all(line.endswith("}") for line in (tmp_path / "runs.jsonl").read_text().splitlines())


def test_corrupt_line_is_named_and_rows_are_not_lost(tmp_path):
    append_row(tmp_path, make_row(run_id="a"))
    with (tmp_path / "runs.jsonl").open("a") as handle:
        handle.write('{"run_id": "torn", "meth\n')
    before = (tmp_path / "runs.jsonl").read_text()
    with pytest.raises(HarnessError, match=r"line 2 is not valid JSON.*other rows are intact"):
        read_rows(tmp_path)
    assert (tmp_path / "runs.jsonl").read_text() == before


def test_nan_is_refused_not_written(tmp_path):
    with pytest.raises(ValueError):
        append_row(tmp_path, make_row(bleu=float("nan")))
    assert not (tmp_path / "runs.jsonl").exists() or (tmp_path / "runs.jsonl").read_text() == ""


def test_config_hash_ignores_where_results_go():
    base = {"method": {"name": "h2o", "m": 64}, "seed": 0, "results_dir": "a"}
    assert config_hash(base) == config_hash({**base, "results_dir": "b"})
    assert config_hash(base) != config_hash({**base, "method": {"name": "h2o", "m": 128}})


def test_report_keeps_latest_row_per_configuration():
    rows = [
        make_row(task="generate", method="h2o", method_params={"m": 8}, rougeL=1.0),
        make_row(task="generate", method="full", method_params={}, rougeL=3.0),
        make_row(task="generate", method="h2o", method_params={"m": 8}, rougeL=2.0),
    ]
    latest = latest_rows(rows)
    assert [(r["method"], r["rougeL"]) for r in latest] == [("full", 3.0), ("h2o", 2.0)]
    table = markdown_table(latest, (("method", "method"), ("extra", "params"), ("rougeL", "ROUGE-L")))
    assert table.splitlines()[0] == "| method | params | ROUGE-L |"
    assert table.splitlines()[2:] == ["| full | - | 3.00 |", "| h2o | - | 2.00 |"]
    assert json.loads(json.dumps(latest))  # rows stay JSON-serialisable


def test_peak_memory_sees_an_allocation_inside_the_block():
    import torch

    from experiments.runtime import PeakMemory

    with PeakMemory(torch.device("cpu"), interval=0.005) as outside:
        pass
    with PeakMemory(torch.device("cpu"), interval=0.005) as inside:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
        import time

        time.sleep(0.05)
        del block
    assert inside.mb > outside.mb + 48


def _backfill_script() -> dict:
    import runpy

    from tests.conftest import ROOT

    return runpy.run_path(str(ROOT / "scripts" / "backfill_rows.py"))


def test_backfill_names_the_streamed_text_and_keeps_every_other_line(tmp_path):
    """scripts/backfill_rows.py: a stream row gets its run config's book and its nll.txt's length; a
    row whose folder is gone, a non-test split, a generate row and a damaged line stay byte for byte."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    def stream_row(run_id: str, book: str | None, split: str = "test") -> dict:
        if book is not None:
            folder = tmp_path / "runs" / run_id
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(
                json.dumps({"dataset": {"name": "gutenberg", "book": book, "split": split}})
            )
            (folder / "nll.txt").write_text("2.5\n" * len(book))  # a stream of len(book) + 1 tokens
        return make_row(run_id=run_id, task="stream", method="h2o", dataset="gutenberg", perplexity=40.0)

    rows = [stream_row("a", "hamlet"), stream_row("gone", None), stream_row("v", "othello", split="val"),
            make_row(run_id="g", task="generate", method="full", dataset="aclsum"), stream_row("b", "lear")]  # fmt: skip
    for row in rows:
        append_row(tmp_path, row)
    path = tmp_path / "runs.jsonl"
    with path.open("a") as handle:
        handle.write('{"run_id": "torn", \n')
    before = path.read_text().splitlines()

    script = _backfill_script()
    fillers = [script["stream_filler"](tmp_path)]
    assert script["backfill"](tmp_path, fillers) == (2, ["gone", "v"])
    after = path.read_text().splitlines()
    assert [json.loads(line).get("text") for line in after[:5]] == ["hamlet", None, None, None, "lear"]
    assert [json.loads(line).get("context_length") for line in after[:5]] == [7, None, None, None, 5]
    assert [after[i] for i in (1, 2, 3, 5)] == [before[i] for i in (1, 2, 3, 5)]
    assert (tmp_path / "runs.jsonl.bak").read_text().splitlines() == before
    assert script["backfill"](tmp_path, fillers) == (0, ["gone", "v"])  # idempotent

    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "backfill_rows.py"), str(tmp_path / "no")],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode != 0 and "pass a results folder" in missing.stderr and "Traceback" not in missing.stderr


def test_backfill_gives_adore_rows_their_controllers_training_count(tmp_path):
    """An ADORE row gets ``train_sequences`` and ``train_epochs`` from the training.json of its
    checkpoint, trained on its run's training dataset for its (base) model; a checkpoint whose
    artifacts are gone, the same checkpoint name under another dataset and an oracle row stay as they
    were, and a count a row has is kept."""
    artifacts = tmp_path / "artifacts"
    results = tmp_path / "results"
    results.mkdir()

    def trained(model: str, dataset: str, checkpoint: str, count: int) -> None:
        folder = artifacts / "adore" / model / dataset / checkpoint
        folder.mkdir(parents=True)
        (folder / "training.json").write_text(
            json.dumps({"model": model, "dataset": dataset, "train_sequences": count, "epoch_losses": [1.0] * 3})
        )

    trained("smollm2-135m", "gutenberg", "K32-long", 32)
    trained("smollm2-135m", "aclsum", "K32-long", 99)  # the same settings on another dataset: not this run's
    trained("smollm2-135m", "gutenberg", "K32-text", 8)

    def adore_row(run_id: str, checkpoint: str | None, dataset: str = "gutenberg", **params) -> dict:
        method_params = {"m": 128, "scorer": "controller" if checkpoint else "oracle", **params}
        if checkpoint:
            method_params["controller_checkpoint"] = checkpoint
        return make_row(run_id=run_id, task="stream", method="adore", dataset=dataset, method_params=method_params,
                        model="smollm2-135m", text="hamlet", context_length=9216)  # fmt: skip

    # A stream of `text` whose controller trained on gutenberg (method.train_dataset in its config).
    folder = results / "runs" / "t"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": {"train_dataset": "gutenberg"}}))
    rows = [adore_row("a", "K32-long"), adore_row("gone", "K32-none"), adore_row("o", None),
            adore_row("done", "K32-long", train_sequences=7), adore_row("t", "K32-text", dataset="text")]  # fmt: skip
    for row in rows:
        append_row(results, row)
    before = (results / "runs.jsonl").read_text().splitlines()

    script = _backfill_script()
    assert script["backfill"](results, [script["controller_filler"](results, artifacts)]) == (3, ["gone"])
    after = [json.loads(line)["method_params"] for line in (results / "runs.jsonl").read_text().splitlines()]
    assert [p.get("train_sequences") for p in after] == [32, None, None, 7, 8]
    assert [p.get("train_epochs") for p in after] == [3, None, None, 3, 3]  # a count the row has is kept
    assert {k: v for k, v in after[0].items() if k not in ("train_sequences", "train_epochs")} == rows[0][
        "method_params"
    ]
    lines = (results / "runs.jsonl").read_text().splitlines()
    assert [lines[i] for i in (1, 2)] == [before[i] for i in (1, 2)]
