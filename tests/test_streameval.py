"""StreamEval: answers checkable by construction, streaming QA exact for full attention, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from adore import ConfigError, DecodingEngine
from adore.methods import build_policy
from experiments.data import dataset_spec, load_samples
from experiments.streameval import accuracy_bins, answer_number, stream_queries
from tests.test_cli import run_cli


def test_answers_are_checkable_by_construction():
    samples = load_samples("streameval", n_lines=100, query_every=10, distance=20, seed=3)
    assert dataset_spec("streameval").task == "streameval"
    assert [int(s.fields["line"]) for s in samples] == list(range(10, 81, 10))  # after lines 30, 40, ..., 100
    stream = ""
    for sample in samples:
        stream += sample.fields["text"]
        written = dict(re.findall(r"^line (\d+): REGISTER_CONTENT is <(\d+)>$", stream, flags=re.M))
        last_line = max(map(int, written))
        line = int(sample.fields["line"])
        assert last_line - line == 20  # the line 20 lines back
        assert written[str(line)] == sample.answer == sample.reference  # the truth is the number written there
        assert sample.fields["text"].endswith(f"Answer: line {line}: REGISTER_CONTENT is <")
    assert len(set(re.findall(r"<(\d{5})>", stream))) > 90  # random 5-digit numbers
    again = load_samples("streameval", n_lines=100, seed=3)
    assert [s.fields for s in again] == [s.fields for s in samples]
    assert [s.answer for s in load_samples("streameval", n_lines=100, seed=4)] != [s.answer for s in samples]
    assert len(load_samples("streameval", 2, n_lines=100)) == 2


def test_bad_streameval_configs_give_one_line():
    with pytest.raises(ConfigError, match=r"n_lines=25 gives no query: the first comes after line 30"):
        load_samples("streameval", n_lines=25)
    with pytest.raises(ConfigError, match="dataset.query_every must be a positive integer"):
        load_samples("streameval", query_every=0)


def test_answer_parsing_and_bins():
    assert answer_number("48213>\n\n") == "48213" and answer_number(" 7>") == "7" and answer_number("x1") is None
    records = [{"position": p, "correct": c} for p, c in [(100, True), (400, False), (600, True), (700, True)]]
    assert accuracy_bins(records, 512) == [
        {"start": 0, "end": 512, "queries": 2, "accuracy": 50.0},
        {"start": 512, "end": 1024, "queries": 2, "accuracy": 100.0},
    ]


class ByteTokenizer:
    """Text <-> ids 3..255 for the tiny model (one id per byte, invertible on ASCII)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + b for b in text.encode()]}

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i - 3 for i in ids if 3 <= i < 131).decode(errors="replace")


def greedy_reference(model, samples, tokenizer, answer_tokens: int) -> list[str]:
    """Full attention without the engine: one causal pass over everything so far, per answer token."""
    ids, answers = [], []
    for sample in samples:
        ids += tokenizer(sample.fields["text"])["input_ids"]
        answer = []
        for _ in range(answer_tokens):
            with torch.no_grad():
                token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            answer.append(token)
            ids.append(token)
        answers.append(tokenizer.decode(answer))
    return answers


@pytest.mark.parametrize("chunk", [1, 64])
def test_full_streaming_answers_equal_plain_greedy_decoding(tiny_model, chunk):
    samples = load_samples("streameval", 3, n_lines=50, query_every=10, distance=20, seed=1)[:2]
    tokenizer = ByteTokenizer()
    records, _, kv = stream_queries(DecodingEngine(tiny_model, build_policy("full")), tokenizer, samples, 4, chunk)
    assert [r["answer_text"] for r in records] == greedy_reference(tiny_model, samples, tokenizer, 4)
    first = len(tokenizer(samples[0].fields["text"])["input_ids"])
    assert [r["position"] for r in records] == [
        first,
        first + 4 + len(tokenizer(samples[1].fields["text"])["input_ids"]),
    ]
    assert [r["truth"] for r in records] == [s.answer for s in samples] and kv > 0
    assert all(r["correct"] == (r["prediction"] == r["truth"]) for r in records)


def test_window_streams_within_its_budget(tiny_model):
    samples = load_samples("streameval", n_lines=40, seed=2)
    tokenizer = ByteTokenizer()
    full = stream_queries(DecodingEngine(tiny_model, build_policy("full")), tokenizer, samples, 4, 32)
    window = stream_queries(DecodingEngine(tiny_model, build_policy("window", m=16)), tokenizer, samples, 4, 1)
    assert [r["position"] for r in window[0]] == [r["position"] for r in full[0]]  # same stream for every method
    assert window[2] < full[2] / 10  # the cache stayed at its budget (asserted by the engine at every step)
    with pytest.raises(ConfigError, match="task.answer_tokens must be positive"):
        stream_queries(DecodingEngine(tiny_model, build_policy("full")), tokenizer, samples, 0, 1)


@pytest.mark.model
def test_full_on_a_short_stream_with_the_embedded_model(smollm2):
    """On SmolLM2 the streamed cache answers exactly what plain greedy decoding answers."""
    samples = load_samples("streameval", n_lines=30, seed=0)
    engine = DecodingEngine(smollm2.model, build_policy("full"), pad_token_id=smollm2.tokenizer.pad_token_id)
    (record,), _, _ = stream_queries(engine, smollm2.tokenizer, samples, 6, chunk=4096)
    (expected,) = greedy_reference(smollm2.model, samples, smollm2.tokenizer, 6)
    assert record["answer_text"] == expected
    assert re.fullmatch(r"\d+", record["prediction"] or "")  # it answers with a number, right or wrong


@pytest.mark.model
def test_streameval_run_writes_accuracy_row_json_and_plot(tmp_path):
    result = run_cli("task=streameval", "dataset=streameval", "dataset.n_lines=40", "task.chunk=4096",
                     "task.window=256", results_dir=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert row["task"] == "streameval" and row["n_samples"] == 2 and 0 <= row["accuracy"] <= 100
    summary = json.loads((Path(row["run_dir"]) / "streameval.json").read_text())
    assert summary["queries"] == 2 and sum(b["queries"] for b in summary["bins"]) == 2
    assert summary["accuracy"] == pytest.approx(row["accuracy"], abs=0.01)
    assert (Path(row["run_dir"]) / "accuracy.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset=samsum"], "error: samsum needs the Hugging Face hub (offline here"),
        (
            ["task=streameval", "dataset=streameval", "method=adore"],
            "error: ADORE's controller needs a dataset with a train split and dataset 'streameval' has none; set method.train_dataset=aclsum",
        ),
        (
            ["task=stream", "dataset=gutenberg", "dataset.book=comus", "method=adore"],
            "error: dataset.book=comus is one of the works ADORE's controller trains on; stream a held-out work",
        ),
        (["task=streameval", "dataset=aclsum"], "error: dataset 'aclsum' is a 'generate' dataset; use task=generate"),
    ],
)
def test_dataset_errors_on_the_command_line(tmp_path, args, message):
    result = run_cli(*args, results_dir=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith(message), result.stderr[-2000:]
