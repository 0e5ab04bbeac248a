"""The ``throughput`` task: decode speed and memory of every method on one model, side by side.

For every point of a grid (context length x batch size) every method greedily decodes
``new_tokens`` tokens after the same prompts (windows of a Gutenberg text, or seeded random ids),
methods interleaved point by point so that drift of a shared machine hits them alike. Each
(method, point) gives one row with ``task: throughput``: prefill tok/s, decode tok/s, per-step
latency p50/p90, peak memory and KV bytes.

Reference points measured in the same run:

* ``hf_generate``: transformers' ``generate`` with its default ``DynamicCache``; steps are timed by a
  logits processor that stamps every call (the engine's ``full`` should be within 10% of it);
* a **roofline**: this machine's measured memory bandwidth divided by the bytes one decode step
  must read (the weights once, plus every sequence's KV cache) bounds tokens/s from above.

**Memory-budget packing** (the mechanism behind ADORE's reported +221.8%): for a KV budget, each
method runs the largest batch whose decode-time KV fits, and the gain is
``(thr_adore / thr_full - 1) * 100%``. The prompt's prefill holds the whole prompt for every method
(the engine prefills with full attention, then evicts); packing budgets the decode-time cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from adore import ConfigError, DecodingEngine, KVPolicy, LoadedModel, StepTimer, kv_bytes_per_token
from experiments.infra.results import append_row, clean_number, new_run_id, read_rows
from experiments.infra.runtime import PeakMemory, build_row, model_from_config, policy_from_config, prepare_policy
from experiments.infra.tasks import register_task
from experiments.metrics import latency_percentiles
from experiments.reporting.throughput_plots import method_label, plot_all
from experiments.stats import paired_cluster_ratio_ci, stratified_ratio_ci

HF_GENERATE = "hf_generate"
CONF_METHODS = Path(__file__).resolve().parents[2] / "conf" / "method"


# ---- arithmetic (tested against hand computations) ----------------------------------------------
def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters a decode step reads (tied matrices counted once)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if parameter.data_ptr() not in seen:
            seen.add(parameter.data_ptr())
            total += parameter.numel() * parameter.element_size()
    return total


def roofline_tok_s(bandwidth_bytes_s: float, weights: int, kv_bytes: int, batch_size: int) -> float:
    """Best possible decode tokens/s if a step only had to stream its bytes from memory once:
    the weights, plus the KV cache of all ``batch_size`` sequences (``kv_bytes`` for the batch)."""
    return batch_size * bandwidth_bytes_s / (weights + kv_bytes)


def decode_kv_tokens(policy: KVPolicy | None, context_length: int, new_tokens: int) -> int:
    """Most tokens one sequence holds in the cache while decoding (prefill excluded): everything for
    full attention, else the budget plus the tokens fed in one step (ADORE feeds ``R`` rebuilt
    tokens with the current one)."""
    total = context_length + new_tokens
    budget = None if policy is None else policy.budget
    if budget is None:
        return total
    return min(total, budget + policy.max_step_tokens)


def largest_batch(kv_budget_bytes: int, bytes_per_sequence: int, max_batch: int) -> int:
    """The largest batch (at most ``max_batch``) whose KV fits the budget; 0 when one sequence does not."""
    if bytes_per_sequence <= 0:
        raise ValueError("bytes_per_sequence must be positive")
    return min(max_batch, kv_budget_bytes // bytes_per_sequence)


def packing_gain(adore_tok_s: float, full_tok_s: float) -> float:
    """The paper's throughput gain in percent: ``(thr_adore / thr_full - 1) * 100``."""
    return (adore_tok_s / full_tok_s - 1.0) * 100.0


@torch.inference_mode()
def measure_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s, STREAM-copy style: the best of ``repeats`` copies of a buffer
    far larger than the caches, counting each byte read and written."""
    elements = megabytes * 2**20 // 4
    source = torch.ones(elements, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    best = math.inf
    for _ in range(repeats + 1):  # the first copy warms up (page faults)
        _synchronize(device)
        began = time.perf_counter()
        target.copy_(source)
        _synchronize(device)
        best = min(best, time.perf_counter() - began)
    return 2 * source.nbytes / best


@torch.inference_mode()
def measure_weight_floor(model: torch.nn.Module, batch_size: int, repeats: int = 5) -> float:
    """Seconds of the floor of one decode step at ``batch_size``: one matrix product per linear layer
    of the model (the LM head included), ``[batch, in] @ W^T``, back to back, best of ``repeats``.

    What a step cannot avoid on this machine: it reads every weight once, at the speed matrix-vector
    products reach (on 2 CPU cores well below the copy bandwidth of the roofline). A step's time over
    this floor is the overhead left to remove (attention, norms, the cache, Python)."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    device, dtype = linears[0].weight.device, linears[0].weight.dtype
    inputs = {n: torch.randn(batch_size, n, device=device, dtype=dtype) for n in {m.in_features for m in linears}}
    best = math.inf
    for _ in range(repeats + 1):  # the first sweep warms up
        _synchronize(device)
        began = time.perf_counter()
        for module in linears:
            torch.nn.functional.linear(inputs[module.in_features], module.weight)
        _synchronize(device)
        best = min(best, time.perf_counter() - began)
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release_memory() -> None:
    """Return freed heap to the OS so the next block's resident-set peak is its own."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- methods and prompts ------------------------------------------------------------------------
@dataclass
class MethodSpec:
    """A method of the run: its name and parameters (``conf/method/<name>.yaml`` defaults, then the
    run's ``m`` and ``R``, then the entry's own keys)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # keys the entry set itself (shown in the label)

    @property
    def label(self) -> str:
        shown = {k: v for k, v in self.params.items() if (k in ("m", "R") or k in self.overrides) and v is not None}
        return self.name + "".join(f" {k}={v}" for k, v in shown.items())


def method_specs(settings: dict[str, Any]) -> list[MethodSpec]:
    from omegaconf import OmegaConf

    specs = []
    for entry in settings["methods"]:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = entry.pop("name", None)
        if name == HF_GENERATE:
            specs.append(MethodSpec(HF_GENERATE))
            continue
        file = CONF_METHODS / f"{name}.yaml"
        if not file.is_file():
            choices = ", ".join(sorted([p.stem for p in CONF_METHODS.glob("*.yaml")] + [HF_GENERATE]))
            raise ConfigError(f"unknown method {name!r} in task.methods; choose from: {choices}")
        params = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(file)).items() if k != "name"}
        for key in ("m", "R"):  # methods that ignore a key (full: m=null) keep their null
            if params.get(key) is not None and settings.get(key) is not None:
                params[key] = settings[key]
        params.update(entry)
        specs.append(MethodSpec(name, params, tuple(k for k in entry if k not in ("m", "R"))))
    return specs


def reference_labels(references: list[str] | None, specs: list[MethodSpec]) -> list[str]:
    """The labels of ``task.references``: each entry names one method of ``task.methods``, by its label
    (``window m=128``) or, where only one method has it, by its name (``window``). ``None`` (the
    default): ``full`` where the run has it, else none."""
    labels = [spec.label for spec in specs]
    if references is None:
        return ["full"] if "full" in labels else []
    resolved = []
    for entry in references:
        matches = [entry] if entry in labels else [spec.label for spec in specs if spec.name == entry]
        if len(matches) != 1:
            found = f"matches {', '.join(map(repr, matches))}" if matches else "is not in task.methods"
            raise ConfigError(
                f"task.references entry {entry!r} {found}; name one method by its label, one of {', '.join(labels)}"
            )
        resolved.append(matches[0])
    return resolved


def prompt_bank(loaded: LoadedModel, settings: dict[str, Any], tokens_needed: int) -> list[int]:
    """Token ids to cut prompts from: a Gutenberg book (repeated to length), or seeded random ids."""
    source = settings.get("text")
    if source:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"task.text {source!r} does not exist; run `make setup` or set task.text=null")
        ids = loaded.tokenizer(path.read_text(errors="replace"))["input_ids"]
        return (ids * (tokens_needed // len(ids) + 1))[:tokens_needed]
    generator = torch.Generator().manual_seed(settings.get("seed", 0))
    return torch.randint(100, loaded.tokenizer.vocab_size, (tokens_needed,), generator=generator).tolist()


def prompts_for(bank: list[int], context_length: int, batch_size: int) -> list[list[int]]:
    """``batch_size`` prompts of ``context_length`` tokens, from different offsets of the bank."""
    stride = max(1, (len(bank) - context_length) // max(1, batch_size))
    return [bank[i * stride : i * stride + context_length] for i in range(batch_size)]


# ---- measuring ----------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One (method, context, batch) point."""

    prefill_s: float
    step_s: list[float]
    batch_size: int
    prompt_tokens: int
    kv_bytes: int  # the most KV bytes reserved at any moment (the prefill included)
    kv_decode_bytes: int  # the same over the decode steps: what a step reads, and what packing budgets
    peak_mem_mb: float

    @property
    def decode_tok_s(self) -> float:
        return self.batch_size * len(self.step_s) / sum(self.step_s)

    @property
    def step_s_p50(self) -> float:
        return statistics.median(self.step_s)

    @classmethod
    def pooled(cls, repeats: list[Measurement]) -> Measurement:
        """One point from repeats measured apart (interleaved with other methods): every timed step,
        the median prefill, the largest memory figures."""
        first = repeats[0]
        return cls(
            statistics.median(r.prefill_s for r in repeats),
            [s for r in repeats for s in r.step_s],
            first.batch_size,
            first.prompt_tokens,
            max(r.kv_bytes for r in repeats),
            max(r.kv_decode_bytes for r in repeats),
            max(r.peak_mem_mb for r in repeats),
        )

    def decode_tok_s_spread(self) -> tuple[float | None, float | None]:
        """p10 and p90 of the per-step decode rate (tokens/s) over every timed step of every repeat:
        how much of the mean a shared machine's noise could move. Interpolated between measured steps
        (``statistics.quantiles``' default extrapolates past the slowest of a few steps, below zero)."""
        if len(self.step_s) < 2:
            return None, None
        p10, p90 = np.percentile([self.batch_size / s for s in self.step_s], [10, 90])
        return float(p10), float(p90)


class _StampEachToken:
    """A logits processor that stamps the step timer: ``generate`` calls it once per new token."""

    def __init__(self, timer: StepTimer):
        self.timer = timer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.timer.stamp()
        return scores


@torch.inference_mode()
def hf_generate_run(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[float], int]:
    """transformers' ``generate`` (default cache, greedy, exactly ``new_tokens``): prefill seconds,
    per-step seconds and the KV bytes of its cache at the end."""
    from transformers import DynamicCache, LogitsProcessorList

    device = loaded.device
    ids = torch.tensor(prompts, device=device)
    timer = StepTimer(device)
    cache = DynamicCache(config=loaded.model.config)
    timer.stamp()  # the start: the first interval is the prefill
    loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache=cache,
        logits_processor=LogitsProcessorList([_StampEachToken(timer)]),
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.keys is not None)
    return timer.seconds[0], timer.seconds[1:], kv


def measure(
    loaded: LoadedModel,
    spec: MethodSpec,
    policy: KVPolicy | None,
    prompts: list[list[int]],
    new_tokens: int,
    warmup_steps: int,
    repeats: int,
) -> Measurement:
    """Decode ``new_tokens`` after ``prompts`` ``repeats`` times; the first ``warmup_steps`` steps of
    every repeat are dropped, the prefill time is the median over repeats."""
    prefills, steps, kv, kv_decode = [], [], 0, 0
    _release_memory()
    with PeakMemory(loaded.device) as memory:
        for _ in range(repeats):
            if policy is None:
                prefill_s, step_s, kv_bytes = hf_generate_run(loaded, prompts, new_tokens)
                decode_bytes = kv_bytes  # a DynamicCache only grows: its end is its peak
            else:
                engine = DecodingEngine(loaded.model, policy, pad_token_id=loaded.tokenizer.pad_token_id)
                result = engine.generate(prompts, new_tokens)
                prefill_s, step_s = result.prefill_s, result.step_s
                kv_bytes, decode_bytes = result.kv_peak_bytes, result.kv_decode_peak_bytes
            prefills.append(prefill_s)
            steps.extend(step_s[warmup_steps:])
            kv, kv_decode = max(kv, kv_bytes), max(kv_decode, decode_bytes)
    return Measurement(statistics.median(prefills), steps, len(prompts), sum(map(len, prompts)), kv, kv_decode,
                       memory.mb)  # fmt: skip


# Where a decode step's time goes: cumulative time (cProfile) of these functions of ``adore/``.
_PROFILED = ("prepare_step", "update", "evict_uniform", "after_attention", "kv_policy_attention")


class DecodeSession:
    """A batch prefilled now (``prompts`` ``[B, T]``, no padding), then decoded greedily a few steps at a
    time by :meth:`steps`, each call continuing where the last stopped: what lets several methods' decodes
    alternate in short turns, and the profiler wrap decode steps alone. ``steps_ahead``: the decode
    steps that will be asked for in all (full attention allocates its cache once for them)."""

    def __init__(self, engine: DecodingEngine, prompts: torch.Tensor, steps_ahead: int):
        self.engine, self.cache = engine, engine.new_cache()
        batch, self.position = prompts.shape
        self.cache.expected_length = self.position + steps_ahead + 1
        at = torch.arange(self.position, device=prompts.device).expand(batch, self.position)
        self.logits = engine.forward(self.cache, prompts, at)
        self.cache.start_decode()
        self.fed: list[torch.Tensor] = []  # the greedy token each step fed, ``[B]``

    def steps(self, count: int) -> list[float]:
        """Decode ``count`` more tokens; each step's seconds."""
        seconds = []
        batch = self.logits.shape[0]
        for _ in range(count):
            started = time.perf_counter()
            token = self.logits[:, -1].argmax(-1)
            position = torch.full((batch, 1), self.position, device=self.logits.device)
            self.logits = self.engine.forward(self.cache, token[:, None], position)
            self.engine.synchronize()
            seconds.append(time.perf_counter() - started)
            self.fed.append(token)
            self.position += 1
        return seconds


def decode_steps(engine: DecodingEngine, prompts: torch.Tensor, steps: int) -> Callable[[], list[float]]:
    """Prefill ``prompts`` (``[B, T]``, no padding) now; return the ``steps`` greedy decode steps, to be
    run (and profiled) on their own: a call returns each step's seconds. The prefill, which dwarfs a
    step and varies more than one, stays out of whatever wraps the call."""
    session = DecodeSession(engine, prompts, steps)
    return lambda: session.steps(steps)


def interleaved_turns(loaded: LoadedModel, specs: list[MethodSpec], policies: list[KVPolicy | None],
                      prompts: list[list[int]], turns: int, steps: int) -> dict[str, list[list[float]]]:  # fmt: skip
    """Every engine method's cache prefilled once (untimed), then ``turns`` turns in which each method
    decodes ``steps`` steps in turn: ``{label: [[seconds of each step] per turn]}``. Turns last a fraction
    of a second, so a stretch of a slow machine reaches the methods of a turn alike, which a whole
    ``generate`` per method and round cannot promise (``hf_generate`` cannot be resumed and is not here)."""
    ids = torch.tensor(prompts, device=loaded.device)
    sessions = {
        spec.label: DecodeSession(
            DecodingEngine(loaded.model, policy, pad_token_id=loaded.tokenizer.pad_token_id), ids, 1 + turns * steps
        )
        for spec, policy in zip(specs, policies, strict=True)
        if policy is not None
    }
    for session in sessions.values():
        session.steps(1)  # one untimed step after the prefill: a warm-up, as every round drops its first
    timed: dict[str, list[list[float]]] = {label: [] for label in sessions}
    for turn in range(turns):
        # Every other turn backwards: no method always runs right after the same other one.
        for label in list(sessions) if turn % 2 == 0 else list(sessions)[::-1]:
            timed[label].append(sessions[label].steps(steps))
    return timed


def profile_decode(
    loaded: LoadedModel, policy: KVPolicy, prompts: list[list[int]], new_tokens: int
) -> dict[str, float]:
    """Milliseconds per decode step by part: the policy's step preparation (ADORE: the controller and
    the rebuild pick), the cache append and masks, eviction (plan + slicing), attention, and the rest
    of the model; ``step`` is the whole step. Only the decode steps are profiled (the prefill runs
    first, outside cProfile). cProfile slows Python more than kernels: read the parts as shares."""
    engine = DecodingEngine(loaded.model, policy, pad_token_id=loaded.tokenizer.pad_token_id)
    ids = torch.tensor(prompts, device=loaded.device)
    total, step_s = _profiled(decode_steps(engine, ids, max(1, new_tokens - 1)))
    ms = {name: 1000 * seconds / len(step_s) for name, seconds in total.items()}
    parts = {
        "policy step (controller, rebuild pick)": ms["prepare_step"],
        "cache append and masks": ms["update"],
        "eviction (plan and slicing)": ms["evict_uniform"] + ms["after_attention"],
        "attention": ms["kv_policy_attention"] - ms["after_attention"],
    }
    step = 1000 * sum(step_s) / len(step_s)
    parts["rest of the model"] = max(0.0, step - sum(parts.values()))
    return {**parts, "step": step}


def _profiled(call) -> tuple[dict[str, float], Any]:
    """Run ``call`` under cProfile: the cumulative seconds of each :data:`_PROFILED` function, and its result."""
    import cProfile
    import pstats

    import adore

    package = str(Path(adore.__file__).parent)
    profiler = cProfile.Profile()
    result = profiler.runcall(call)
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    seconds = dict.fromkeys(_PROFILED, 0.0)
    for (file, _, name), values in stats.items():
        if name in seconds and file.startswith(package):
            seconds[name] += values[3]
    return seconds, result


def run_profiles(loaded: LoadedModel, specs: list[MethodSpec], policies: list[KVPolicy | None], bank: list[int],
                 profile: dict[str, Any]) -> dict[str, dict[str, float]]:  # fmt: skip
    """:func:`profile_decode` for every method of ``profile.methods`` at ``profile.context_length`` and each
    of ``profile.batch_sizes`` (default batch 1; labels beyond batch 1 say ``@ batch b``)."""
    out = {}
    for batch in profile.get("batch_sizes") or [1]:
        prompts = prompts_for(bank, profile["context_length"], batch)
        for spec, policy in zip(specs, policies, strict=True):
            if policy is not None and spec.name in profile["methods"]:
                label = spec.label if batch == 1 else f"{spec.label} @ batch {batch}"
                out[label] = profile_decode(loaded, policy, prompts, profile["new_tokens"])
    return out


# ---- speedups ------------------------------------------------------------------------------------
def speedups(timings: list[dict[str, Any]], references: list[str], paired: bool = False) -> list[dict[str, Any]]:
    """Every method's decode tokens/s over each reference's, at each point where both ran, with its
    95% interval: ``mean(reference step) / mean(method step)`` (the ratio of the rows' ``decode_tok_s``),
    bootstrapped over the timed steps within each round (:func:`~experiments.stats.stratified_ratio_ci`).

    ``timings``: ``{"method", "context_length", "batch_size", "rounds": [[seconds, ...], ...]}`` per
    (method, point), as ``summary.json`` keeps them. ``paired``: the rounds are short interleaved turns,
    turn ``k`` of every method run back to back; then whole turns are resampled, the same ones for
    both methods (:func:`~experiments.stats.paired_cluster_ratio_ci`), so the interval covers the noise
    between turns too.
    """
    at = {(t["method"], t["context_length"], t["batch_size"]): t["rounds"] for t in timings}
    out = []
    for reference in references:
        for method, context_length, batch_size in at:
            base = at.get((reference, context_length, batch_size))
            if method == reference or base is None:
                continue
            rounds = at[(method, context_length, batch_size)]
            steps, base_steps = [s for r in rounds for s in r], [s for r in base for s in r]
            ci = paired_cluster_ratio_ci(base, rounds) if paired else stratified_ratio_ci(base, rounds)
            # Each round's own ratio: the noise between a method's stretches of steps (the machine slower
            # for seconds at a time), which the interval, resampling single steps, does not see.
            per_round = [
                statistics.fmean(b) / statistics.fmean(r) for b, r in zip(base, rounds, strict=False) if b and r
            ]
            out.append({"method": method, "reference": reference, "context_length": context_length,
                        "batch_size": batch_size, "ratio": statistics.fmean(base_steps) / statistics.fmean(steps),
                        "ci": None if ci is None else list(ci), "per_round": per_round, "steps": len(steps),
                        "reference_steps": len(base_steps), "rounds": len(rounds)})  # fmt: skip
    return out


# ---- the task -----------------------------------------------------------------------------------
@dataclass
class ThroughputRun:
    """One ``task=throughput`` invocation: its folder, rows and the shared fields of its rows."""

    cfg: dict[str, Any]
    loaded: LoadedModel
    run_id: str = field(default_factory=new_run_id)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        path = Path(self.cfg["results_dir"]) / "runs" / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_row(self, task: str, spec: MethodSpec, policy: KVPolicy | None, point: Measurement,
                  context_length: int, began: float, floor_s: float) -> dict[str, Any]:  # fmt: skip
        """One row; ``floor_s``: the weight-sweep floor of this batch size, measured in this run."""
        p50, p90 = latency_percentiles(point.step_s)
        rate_p10, rate_p90 = point.decode_tok_s_spread()
        row = build_row(
            self.cfg,
            run_id=f"{self.run_id}-{len(self.rows):03d}",
            task=task,
            method=spec.name,
            policy=policy,
            dataset=Path(self.cfg["task"]["text"]).stem if self.cfg["task"].get("text") else "random-ids",
            loaded=self.loaded,
            started=began,
            run_dir=self.run_dir,
            n_samples=point.batch_size,
            prefill_tok_s=clean_number(point.prompt_tokens / point.prefill_s, 2),
            decode_tok_s=clean_number(point.decode_tok_s, 2),
            decode_tok_s_p10=clean_number(rate_p10, 2),
            decode_tok_s_p90=clean_number(rate_p90, 2),
            ms_per_token_p50=clean_number(p50, 2),
            ms_per_token_p90=clean_number(p90, 2),
            peak_mem_mb=clean_number(point.peak_mem_mb, 1),
            kv_cache_mb=clean_number(point.kv_bytes / 2**20, 3),
            kv_decode_mb=clean_number(point.kv_decode_bytes / 2**20, 3),
            context_length=context_length,
            batch_size=point.batch_size,
            floor_ms=clean_number(1000 * floor_s, 2),
            step_over_floor=clean_number(point.step_s_p50 / floor_s, 3),
            **(cpu_threads() if self.loaded.device.type == "cpu" else {}),
        )
        append_row(self.cfg["results_dir"], row)
        self.rows.append(row)
        return row


def _policies(cfg: dict[str, Any], loaded: LoadedModel, specs: list[MethodSpec]) -> list[KVPolicy | None]:
    policies: list[KVPolicy | None] = []
    for spec in specs:
        if spec.name == HF_GENERATE:
            policies.append(None)
            continue
        method = {"name": spec.name, **spec.params}
        policy = policy_from_config(method, cfg)
        prepare_policy({**cfg, "method": method}, loaded, policy)
        policies.append(policy)
    return policies


def _check_settings(settings: dict[str, Any]) -> None:
    for key in ("context_lengths", "batch_sizes"):
        values = settings[key]
        if not values or any(not isinstance(v, int) or v <= 0 for v in values):
            raise ConfigError(f"task.{key} must be a list of positive integers, got {values!r}")
    if settings["new_tokens"] < 2 + settings["warmup_steps"]:
        raise ConfigError("task.new_tokens must exceed task.warmup_steps + 1")
    if settings["repeats"] <= 0:
        raise ConfigError(f"task.repeats must be positive, got {settings['repeats']}")
    interleave = settings.get("interleave") or {}
    if interleave.get("turns", 0) < 0 or (interleave.get("turns") and interleave.get("steps", 0) <= 0):
        raise ConfigError(
            f"task.interleave needs turns >= 0 (0: off) and steps > 0, got {interleave!r}; e.g. "
            "task.interleave.turns=10 task.interleave.steps=3"
        )


def _grid(settings: dict[str, Any]) -> Iterator[tuple[int, int]]:
    skip = {(int(c), int(b)) for c, b in settings.get("skip") or []}
    for batch_size in settings["batch_sizes"]:
        for context_length in settings["context_lengths"]:
            if (context_length, batch_size) not in skip:
                yield context_length, batch_size


# The table's columns: the wait policy beside the point, since it moves a CPU step by half.
THROUGHPUT_METRICS = ("context_length", "batch_size", "omp_wait_policy", "prefill_tok_s", "decode_tok_s",
                      "peak_mem_mb", "kv_cache_mb")  # fmt: skip


# Not resumable: a run writes one row per method, context and batch it measures.
@register_task(
    "throughput",
    metrics=THROUGHPUT_METRICS,
)
def run_throughput(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Measure the grid, the roofline and (optionally) packing; write rows, ``summary.json``,
    ``table.md`` and the plots into the run folder."""
    settings = cfg["task"]
    _check_settings(settings)
    specs = method_specs(settings)
    references = reference_labels(settings.get("references"), specs)
    loaded = model_from_config(cfg)
    if loaded.device.type == "cpu":
        warn_if_shared()
    policies = _policies(cfg, loaded, specs)
    run = ThroughputRun(cfg, loaded)
    (run.run_dir / "config.json").write_text(json.dumps(cfg, indent=2, default=str))

    grid = list(_grid(settings))
    packing = settings.get("packing") or {}
    profile_context = (settings.get("profile") or {}).get("context_length") or 0
    longest = max([c for c, _ in grid] + [packing.get("context_length") or 0, profile_context]) + settings["new_tokens"]
    batches = (
        settings["batch_sizes"]
        + [packing.get("max_batch") or 1]
        + ((settings.get("profile") or {}).get("batch_sizes") or [1])
    )
    bank = prompt_bank(loaded, settings, longest * max(batches))
    bandwidth = measure_bandwidth(loaded.device)
    weights = weight_bytes(loaded.model)

    # Warm every code path once (allocator, kernels, the controller) outside the timed points.
    for spec, policy in zip(specs, policies, strict=True):
        measure(loaded, spec, policy, prompts_for(bank, 64, 1), 4, 0, 1)

    roofline: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []  # every timed step by round: what the speedups' intervals resample
    interleaved: list[dict[str, Any]] = []  # the same by interleaved turn (task.interleave)
    interleave = settings.get("interleave") or {}
    with tqdm(total=len(grid) * len(specs) * settings["repeats"], desc="throughput", unit="run") as bar:
        for context_length, batch_size in grid:
            prompts = prompts_for(bank, context_length, batch_size)
            # Repeats go round the methods (each method once per round), so a drift of the machine
            # reaches every method alike; the floor is measured every round (best of them).
            floors, repeats = [], {spec.label: [] for spec in specs}
            seconds = dict.fromkeys(repeats, 0.0)
            for round_ in range(settings["repeats"]):
                floors.append(measure_weight_floor(loaded.model, batch_size))
                for spec, policy in zip(specs, policies, strict=True):
                    bar.set_postfix_str(f"{spec.label} ctx={context_length} batch={batch_size} round {round_ + 1}")
                    began = time.perf_counter()
                    repeats[spec.label].append(measure(loaded, spec, policy, prompts, settings["new_tokens"],
                                                       settings["warmup_steps"], 1))  # fmt: skip
                    seconds[spec.label] += time.perf_counter() - began
                    bar.update(1)
            for spec, policy in zip(specs, policies, strict=True):
                point = Measurement.pooled(repeats[spec.label])
                began = time.perf_counter() - seconds[spec.label]  # the row's wall time: this method's own
                run.write_row("throughput", spec, policy, point, context_length, began, min(floors))
                timings.append({"method": spec.label, "context_length": context_length, "batch_size": batch_size,
                                "rounds": [r.step_s for r in repeats[spec.label]]})  # fmt: skip
                best = roofline_tok_s(bandwidth, weights, point.kv_decode_bytes, batch_size)
                roofline.append({"method": spec.label, "context_length": context_length, "batch_size": batch_size,
                                 "decode_tok_s": point.decode_tok_s, "roofline_tok_s": best,
                                 "fraction": point.decode_tok_s / best})  # fmt: skip
            if interleave.get("turns"):
                bar.set_postfix_str(f"interleaved turns ctx={context_length} batch={batch_size}")
                turns = interleaved_turns(loaded, specs, policies, prompts, interleave["turns"], interleave["steps"])
                interleaved += [{"method": label, "context_length": context_length, "batch_size": batch_size,
                                 "rounds": rounds} for label, rounds in turns.items()]  # fmt: skip
                _release_memory()

    packed = run_packing(run, specs, policies, bank, packing, settings) if packing.get("kv_budget_mb") else None
    profile = settings.get("profile") or {}
    profiles = run_profiles(loaded, specs, policies, bank, profile) if profile.get("context_length") else {}
    summary = {
        "machine": machine_description(loaded.device),
        "bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes": weights,
        "kv_bytes_per_token": kv_bytes_per_token(loaded.model.config, loaded.dtype),
        "roofline": roofline,
        "packing": packed,
        "profile": profiles,
        "references": references,
        "timings": timings,
        "interleaved": interleaved,
    }
    print(write_outputs(run.run_dir, run.rows, summary, loaded.name))
    return run.rows


def write_outputs(run_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any], model: str) -> str:
    """``summary.json``, ``table.md`` and the figures of a run; returns the table. The speedups are
    derived here from the timings (runs before they were kept have none)."""
    references = summary.get("references") or []
    summary["speedups"] = speedups(summary.get("timings") or [], references)
    summary["interleaved_speedups"] = speedups(summary.get("interleaved") or [], references, paired=True)
    table = (
        summary_table(rows, summary["roofline"], summary["packing"])
        + speedup_tables(summary["speedups"], "timed steps resampled within each round")
        + speedup_tables(summary["interleaved_speedups"], "whole turns resampled", unit="turn")
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (run_dir / "table.md").write_text(table)
    plot_all(rows, summary["packing"], summary["profile"], run_dir, model, summary["speedups"],
             summary["interleaved_speedups"])  # fmt: skip
    return table


def refresh(run_dir: str | Path) -> str:
    """Rebuild a finished run's table, packing gains and figures from its rows and ``summary.json``
    (after a change to the summary or plotting code; nothing is measured again):
    ``python -m experiments.tasks.throughput results/throughput/runs/<run_id>``."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "summary.json").is_file():
        raise ConfigError(f"{run_dir} has no summary.json; give the folder of a task=throughput run")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [row for row in read_rows(run_dir.parent.parent) if str(row["run_id"]).startswith(run_dir.name + "-")]
    if not rows:
        raise ConfigError(
            f"no rows of run {run_dir.name} in {run_dir.parent.parent / 'runs.jsonl'}; give a run folder that is "
            "still under its results folder's runs/"
        )
    if summary.get("packing"):
        summary["packing"]["gain_percent"] = packing_gains(summary["packing"]["methods"])
    return write_outputs(run_dir, rows, summary, rows[0]["model"])


def run_packing(
    run: ThroughputRun,
    specs: list[MethodSpec],
    policies: list[KVPolicy | None],
    bank: list[int],
    packing: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Each method at the largest batch whose decode-time KV fits ``packing.kv_budget_mb``."""
    loaded = run.loaded
    context_length, new_tokens = packing["context_length"], settings["new_tokens"]
    budget = int(packing["kv_budget_mb"] * 2**20)
    per_token = kv_bytes_per_token(loaded.model.config, loaded.dtype)
    wanted = set(packing.get("methods") or [spec.name for spec in specs])
    out: dict[str, Any] = {"kv_budget_mb": packing["kv_budget_mb"], "context_length": context_length, "methods": []}
    for spec, policy in zip(specs, policies, strict=True):
        if spec.name not in wanted or spec.name == HF_GENERATE:
            continue
        per_sequence = per_token * decode_kv_tokens(policy, context_length, new_tokens)
        batch = largest_batch(budget, per_sequence, packing["max_batch"])
        entry = {"method": spec.label, "name": spec.name, "bytes_per_sequence": per_sequence, "batch_size": batch}
        if batch > 0:
            began = time.perf_counter()
            point = measure(loaded, spec, policy, prompts_for(bank, context_length, batch), new_tokens,
                            settings["warmup_steps"], settings["repeats"])  # fmt: skip
            run.write_row("packing", spec, policy, point, context_length, began,
                          measure_weight_floor(loaded.model, batch))  # fmt: skip
            entry["decode_tok_s"] = point.decode_tok_s
        out["methods"].append(entry)
    out["gain_percent"] = packing_gains(out["methods"])
    return out


def packing_gains(entries: list[dict[str, Any]]) -> dict[str, float]:
    """The paper's gain over ``full`` of every other packed method that ran, in ``task.packing.methods``
    order (the first is the headline: list the method under study first after ``full``)."""
    full = next((e.get("decode_tok_s") for e in entries if e["name"] == "full"), None)
    if not full:
        return {}
    return {e["method"]: packing_gain(e["decode_tok_s"], full) for e in entries
            if e["name"] != "full" and e.get("decode_tok_s")}  # fmt: skip


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    threads = cpu_threads()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads['cpu_threads']} threads, OMP_WAIT_POLICY={threads['omp_wait_policy']}"
    )


def cpu_threads() -> dict[str, Any]:
    """How torch's CPU threads ran, for every speed row. The wait policy moves a decode step by half:
    passive threads sleep after every parallel region and pay a wake-up (~60 us here) at the next, of
    which a step has hundreds; spinning threads do not, but collapse when another process shares the
    cores (README, "Speed run")."""
    return {"cpu_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def warn_if_shared(threshold: float = 0.5) -> None:
    """One line when the CPU is busy with other work before a CPU speed run: its rows would time the
    contention, not the methods (never an error: a shared machine may be all there is). Busy means
    more runnable processes (the 1-minute load average) than the cores torch leaves free, plus
    ``threshold``."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    spare = max(0, (os.cpu_count() or 1) - torch.get_num_threads())
    if load > spare + threshold:
        print(
            f"warning: load average {load:.2f} before the speed run: other processes share the CPU, so "
            "the timings will be noisy; pause them for numbers worth citing",
            file=sys.stderr,
        )


def speed_grid(rows: list[dict[str, Any]], key: str = "decode_tok_s") -> str:
    """Markdown: ``key`` by method (rows) and context length (columns), one table per batch size."""
    grid = [row for row in rows if row["task"] == "throughput"]
    out = []
    for batch in sorted({row["batch_size"] for row in grid}):
        cells: dict[str, dict[int, Any]] = {}
        for row in (r for r in grid if r["batch_size"] == batch):
            cells.setdefault(method_label(row), {})[row["context_length"]] = row[key]
        contexts = sorted({c for values in cells.values() for c in values})
        out += [f"| batch {batch}: {key} | " + " | ".join(map(str, contexts)) + " |",
                "|---" * (len(contexts) + 1) + "|"]  # fmt: skip
        out += [f"| {label} | " + " | ".join(str(values.get(c, "-")) for c in contexts) + " |"
                for label, values in cells.items()]  # fmt: skip
        out.append("")
    return "\n".join(out)


def _speedup_cell(entry: dict[str, Any] | None, unit: str) -> str:
    """``ratio [lo, hi]``, then each round's ratio (``rounds r1, r2``) where more than one ran, or the
    range of the turns' ratios (``unit="turn"``: an interleaved pass has many)."""
    if entry is None:
        return "-"
    cell = f"{entry['ratio']:.3f}"
    if entry["ci"]:
        cell += f" [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"
    per_round = entry.get("per_round") or []
    if len(per_round) > 1 and unit == "turn":
        cell += f"; {len(per_round)} turns {min(per_round):.3f} to {max(per_round):.3f}"
    elif len(per_round) > 1:
        cell += "; rounds " + ", ".join(f"{r:.3f}" for r in per_round)
    return cell


def speedup_tables(entries: list[dict[str, Any]], interval: str, unit: str = "round") -> str:
    """Markdown: per reference, each method's decode tok/s over it by point, with its 95% interval
    (``interval`` says how it was resampled) and each ``unit``'s (round or interleaved turn) own ratio."""
    lines: list[str] = []
    for reference in dict.fromkeys(e["reference"] for e in entries):
        mine = [e for e in entries if e["reference"] == reference]
        points = sorted({(e["batch_size"], e["context_length"]) for e in mine})
        cells = {(e["method"], e["batch_size"], e["context_length"]): e for e in mine}
        over = f"{reference}, interleaved turns" if unit == "turn" else reference
        lines += ["", f"Decode tok/s over {over}: the ratio, its 95% interval ({interval}) and each {unit}'s own ratio",
                  "",
                  "| method | " + " | ".join(f"batch {b}, {c}" for b, c in points) + " |",
                  "|---" * (len(points) + 1) + "|"]  # fmt: skip
        for method in dict.fromkeys(e["method"] for e in mine):
            row = [_speedup_cell(cells.get((method, batch, context)), unit) for batch, context in points]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + ("\n" if lines else "")


def summary_table(rows: list[dict[str, Any]], roofline: list[dict[str, Any]], packed: dict[str, Any] | None) -> str:
    """Markdown: decode tokens/s by method and context; then tokens/s, memory and roofline fraction by
    method, context and batch; then packing."""
    lines = [speed_grid(rows), "| method | context | batch | prefill tok/s | decode tok/s | p50 ms | p90 ms | peak MB | "
             "KV MB | decode KV MB | step / floor | roofline |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    # Keyed by what a fraction describes, never by row order (a missing row would shift every one after it).
    fractions = {
        (entry["method"], entry["context_length"], entry["batch_size"]): entry["fraction"] for entry in roofline
    }
    for row in (r for r in rows if r["task"] == "throughput"):
        label = method_label(row)
        fraction = fractions.get((label, row["context_length"], row["batch_size"]))
        lines.append(
            f"| {label} | {row['context_length']} | {row['batch_size']} | {row['prefill_tok_s']} | "
            f"{row['decode_tok_s']} | {row['ms_per_token_p50']} | {row['ms_per_token_p90']} | "
            f"{row['peak_mem_mb']} | {row['kv_cache_mb']} | {row.get('kv_decode_mb', '-')} | "
            f"{row.get('step_over_floor', '-')} | {'-' if fraction is None else f'{fraction:.1%}'} |"
        )
    if packed:
        lines += ["", f"Packing: KV budget {packed['kv_budget_mb']} MB at context {packed['context_length']}", "",
                  "| method | batch | KV per sequence MB | decode tok/s |", "|---|---|---|---|"]  # fmt: skip
        for entry in packed["methods"]:
            speed = entry.get("decode_tok_s")
            lines.append(f"| {entry['method']} | {entry['batch_size']} | {entry['bytes_per_sequence'] / 2**20:.2f} | "
                         f"{'-' if speed is None else f'{speed:.2f}'} |")  # fmt: skip
        for label, gain in (packed.get("gain_percent") or {}).items():
            lines += ["", f"Gain of {label} over full: {gain:+.1f}%"]
    return "\n".join(lines) + "\n"


def main(folders: list[str]) -> None:
    """``python -m experiments.tasks.throughput <run folder> ...``: :func:`refresh` each folder."""
    if not folders:
        raise SystemExit("usage: python -m experiments.tasks.throughput results/throughput/runs/<run_id> ...")
    for folder in folders:
        try:
            print(refresh(folder))
        except ConfigError as error:
            raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
