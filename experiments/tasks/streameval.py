"""The ``streameval`` task: streaming question answering (StreamingLLM's StreamEval) under a policy.

One persistent cache holds the whole stream (see :mod:`experiments.data.streameval`). The record is
fed at explicit positions (``task.chunk`` tokens per forward, the policy evicting after each, as in
``task=stream``); at each query the answer is decoded greedily from the same cache for exactly
``task.answer_tokens`` tokens (each fed back, so every method's stream has the same positions), its
leading number compared with the truth, and streaming goes on. Reports the accuracy overall (row key
``accuracy``) and per bin of stream length (``task.window`` tokens) in ``streameval.json`` and
``accuracy.png``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from tqdm import tqdm

from adore import ConfigError, DecodingEngine, StepTimer
from adore.core.plotting import new_figure, save_figure
from experiments.data import Sample, dataset_options, load_samples
from experiments.infra.results import clean_number
from experiments.infra.runtime import PeakMemory, load_for, start_task
from experiments.infra.tasks import register_task
from experiments.metrics import latency_percentiles

_LEADING_NUMBER = re.compile(r"\s*(\d+)")


def answer_number(text: str) -> str | None:
    """The number a StreamEval answer starts with (``"48213>\\n"`` -> ``"48213"``)."""
    match = _LEADING_NUMBER.match(text)
    return match.group(1) if match else None


@torch.inference_mode()
def stream_queries(
    engine: DecodingEngine,
    tokenizer,
    samples: list[Sample],
    answer_tokens: int = 8,
    chunk: int = 1,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], list[float], int]:
    """Stream the samples' texts through one cache, answering each query on the way.

    Returns one record per query (``line``, ``position``: stream length in tokens at the query,
    ``truth``, ``prediction``, ``correct``), the wall time of every forward, and the most KV bytes
    held at any moment.
    """
    if chunk <= 0:
        raise ConfigError(f"task.chunk must be positive, got {chunk}")
    if answer_tokens <= 0:
        raise ConfigError(f"task.answer_tokens must be positive, got {answer_tokens}")
    device = engine.device
    cache = engine.new_cache()
    position = 0
    records: list[dict[str, Any]] = []
    timer = StepTimer(device)
    times = timer.seconds

    def feed(ids: list[int]) -> torch.Tensor:
        nonlocal position
        logits = None
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            with timer.step():
                logits = engine.forward(
                    cache,
                    torch.tensor([piece], device=device),
                    torch.arange(position, position + len(piece), device=device)[None],
                )
            position += len(piece)
        return logits

    for sample in tqdm(samples, desc="streameval", unit="query", disable=not progress):
        ids = tokenizer(sample.fields["text"], add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"StreamEval segment {sample.id!r} has no tokens")
        logits = feed(ids)
        query_position = position
        answer: list[int] = []
        for _ in range(answer_tokens):  # a fixed count: the stream's positions do not depend on the method
            token = int(logits[0, -1].argmax())
            answer.append(token)
            logits = feed([token])
        text = tokenizer.decode(answer, skip_special_tokens=True)
        prediction = answer_number(text)
        records.append(
            {"id": sample.id, "line": int(sample.fields["line"]), "position": query_position, "truth": sample.answer,
             "answer_text": text, "prediction": prediction, "correct": prediction == sample.answer}
        )  # fmt: skip
    return records, times, cache.peak_kv_bytes


def accuracy_bins(records: list[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """Accuracy (percent) of the queries in consecutive bins of ``window`` tokens of stream length."""
    if window <= 0:
        raise ConfigError(f"task.window must be positive, got {window}")
    bins: dict[int, list[bool]] = {}
    for record in records:
        bins.setdefault(record["position"] // window, []).append(record["correct"])
    return [
        {"start": b * window, "end": (b + 1) * window, "queries": len(hits), "accuracy": 100.0 * sum(hits) / len(hits)}
        for b, hits in sorted(bins.items())
    ]


def plot_accuracy(records: list[dict[str, Any]], bins: list[dict[str, Any]], path, title: str) -> None:
    figure, axis = new_figure(figsize=(6, 3.5))
    axis.scatter([r["position"] for r in records], [100.0 * r["correct"] for r in records], s=12, alpha=0.4,
                 label="query (right / wrong)")  # fmt: skip
    axis.plot([(b["start"] + b["end"]) / 2 for b in bins], [b["accuracy"] for b in bins], marker="o",
              label="accuracy per bin")  # fmt: skip
    axis.set(xlabel="stream length at the query (tokens)", ylabel="accuracy (%)", title=title, ylim=(-5, 105))
    axis.legend(loc="center right", fontsize=8)
    save_figure(figure, path)


@register_task(
    "streameval",
    resumable=True,
    uses_policy=True,
    summary=lambda row: (
        f"StreamEval accuracy {row['accuracy']}% on {row['n_samples']} queries; curve in {row['run_dir']}"
    ),
)
def run_streameval(cfg: dict[str, Any]) -> dict[str, Any]:
    run, policy, spec = start_task(cfg, "streameval")
    task = cfg["task"]
    samples = load_samples(spec.name, cfg["dataset"].get("limit"), **dataset_options(cfg["dataset"]))
    loaded = load_for(cfg, policy)
    engine = DecodingEngine(loaded.model, policy, pad_token_id=loaded.tokenizer.pad_token_id)
    run.save_config()
    with PeakMemory(loaded.device) as memory:
        records, times, kv_peak = stream_queries(
            engine, loaded.tokenizer, samples, task["answer_tokens"], task["chunk"], progress=True
        )
    accuracy = 100.0 * sum(r["correct"] for r in records) / len(records)
    bins = accuracy_bins(records, task["window"])
    summary = {"accuracy": accuracy, "queries": len(records), "stream_tokens": records[-1]["position"],
               "bins": bins, "records": records}  # fmt: skip
    (run.run_dir / "streameval.json").write_text(json.dumps(summary, indent=1))
    plot_accuracy(records, bins, run.run_dir / "accuracy.png", f"StreamEval: {policy.method_name}")
    p50, p90 = latency_percentiles(times)
    tokens = records[-1]["position"] + task["answer_tokens"]
    return run.finish(
        policy,
        loaded,
        n_samples=len(records),
        accuracy=clean_number(accuracy, 2),
        decode_tok_s=clean_number(tokens / sum(times), 2),
        ms_per_token_p50=clean_number(p50, 2) if task["chunk"] == 1 else None,
        ms_per_token_p90=clean_number(p90, 2) if task["chunk"] == 1 else None,
        peak_mem_mb=clean_number(memory.mb, 1),
        kv_cache_mb=clean_number(kv_peak / 2**20, 3),
    )
