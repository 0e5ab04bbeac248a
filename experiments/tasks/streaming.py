"""The ``stream`` task: perplexity of a text fed token by token under a cache policy.

This is StreamingLLM's long-text evaluation: one forward per token, the policy evicting after every
step, the NLL of every next token recorded. ``task.chunk=C`` feeds ``C`` tokens per forward and
evicts once per chunk: exact for ``full``, an approximation for evicting policies (a token may see
up to ``C - 1`` tokens that token-by-token streaming would already have evicted).
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from tqdm import tqdm

from adore import ConfigError, DecodingEngine, StepTimer
from adore.core.plotting import new_figure, save_figure
from experiments.data import dataset_options, load_samples
from experiments.infra.results import clean_number
from experiments.infra.runtime import PeakMemory, load_for, position_notes, start_task
from experiments.infra.tasks import register_task
from experiments.metrics import latency_percentiles
from experiments.stats import block_bootstrap_ci


@torch.inference_mode()
def stream_nll(
    engine: DecodingEngine, token_ids: list[int], chunk: int = 1, progress: bool = False
) -> tuple[list[float], list[float], int]:
    """NLL of tokens ``1 .. n-1`` given everything before them (under the policy).

    Returns the per-token NLLs, the wall time of every forward, and the most KV bytes held at any moment.
    """
    if chunk <= 0:
        raise ConfigError(f"task.chunk must be positive, got {chunk}")
    if len(token_ids) < 2:
        raise ConfigError("the text is shorter than two tokens: nothing to predict; give a longer text")
    ids = torch.tensor([token_ids], device=engine.device)
    cache = engine.new_cache()
    cache.expected_length = len(token_ids)  # an unbounded cache then allocates once
    nll: list[float] = []
    timer = StepTimer(engine.device)
    last = len(token_ids) - 1  # the last token is only a target
    with tqdm(total=last, desc="streaming", unit="tok", disable=not progress) as bar:
        for start in range(0, last, chunk):
            stop = min(start + chunk, last)
            with timer.step():
                logits = engine.forward(
                    cache,
                    ids[:, start:stop],
                    torch.arange(start, stop, device=ids.device)[None],
                    logits_to_keep=stop - start,
                )
            losses = torch.nn.functional.cross_entropy(
                logits[0].float(), ids[0, start + 1 : stop + 1], reduction="none"
            )
            nll.extend(losses.tolist())
            bar.update(stop - start)
    return nll, timer.seconds, cache.peak_kv_bytes


def window_perplexities(nll: list[float], window: int) -> list[dict[str, float]]:
    """``exp(mean NLL)`` over consecutive windows of ``window`` predicted tokens."""
    return [
        {"start": start, "tokens": len(nll[start : start + window]),
         "perplexity": math.exp(sum(nll[start : start + window]) / len(nll[start : start + window]))}
        for start in range(0, len(nll), window)
    ]  # fmt: skip


def plot_windows(windows: list[dict[str, float]], path, title: str) -> None:
    figure, axis = new_figure(figsize=(6, 3.5))
    axis.plot([w["start"] + w["tokens"] / 2 for w in windows], [w["perplexity"] for w in windows], marker="o")
    axis.set(xlabel="position (tokens)", ylabel="perplexity (window)", title=title, yscale="log")
    save_figure(figure, path)


# Per-token NLLs are correlated along a text, so the perplexity's interval resamples contiguous
# blocks of this many tokens (a block bootstrap), not single tokens.
CI_BLOCK_TOKENS = 64


def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [clean_number(ci[0]), clean_number(ci[1])]


@register_task(
    "stream",
    resumable=True,
    uses_policy=True,
    metrics=("context_length", "perplexity", "decode_tok_s", "kv_cache_mb"),  # context: the tokens streamed
    summary=lambda row: (
        f"perplexity {row['perplexity']} over the stream; per-window curve in {row['run_dir']}/perplexity.png"
    ),
)
def run_stream(cfg: dict[str, Any]) -> dict[str, Any]:
    run, policy, spec = start_task(cfg, "stream")
    options = dataset_options(cfg["dataset"])
    max_tokens = options.pop("max_tokens", None)
    (sample,) = load_samples(spec.name, 1, **options)
    loaded = load_for(cfg, policy)
    token_ids = loaded.tokenizer(sample.fields["text"])["input_ids"][: max_tokens or None]
    engine = DecodingEngine(loaded.model, policy, pad_token_id=loaded.tokenizer.pad_token_id)
    notes = position_notes(loaded, policy, len(token_ids), f"the stream of {sample.id}")
    run.save_config()
    with PeakMemory(loaded.device) as memory:
        nll, times, kv_peak = stream_nll(engine, token_ids, cfg["task"]["chunk"], progress=True)
    windows = window_perplexities(nll, cfg["task"]["window"])
    (run.run_dir / "nll.txt").write_text("\n".join(f"{value:.6f}" for value in nll) + "\n")
    (run.run_dir / "windows.json").write_text(json.dumps(windows, indent=1))
    plot_windows(windows, run.run_dir / "perplexity.png", f"{policy.method_name} on {sample.id}")
    p50, p90 = latency_percentiles(times)
    return run.finish(
        policy,
        loaded,
        n_samples=1,
        text=sample.id,
        context_length=len(token_ids),
        perplexity=clean_number(math.exp(sum(nll) / len(nll))),
        perplexity_ci=_interval(block_bootstrap_ci(nll, CI_BLOCK_TOKENS, seed=cfg["seed"])),
        decode_tok_s=clean_number(len(nll) / sum(times), 2),
        ms_per_token_p50=clean_number(p50, 2),
        ms_per_token_p90=clean_number(p90, 2),
        peak_mem_mb=clean_number(memory.mb, 1),
        kv_cache_mb=clean_number(kv_peak / 2**20, 3),
        **notes,
    )
