"""Shared pieces of every task: building the policy and model from the config, the run folder."""

from __future__ import annotations

import inspect
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from adore import ADAPTER_SCHEMES, ConfigError, KVPolicy, LoadedModel, RunContext, load_model, merge_adapter
from adore.core.models import adapted_name
from adore.methods import build_policy
from experiments.data import DatasetSpec, dataset_options, dataset_spec, load_samples
from experiments.infra.results import (
    BEYOND_POSITIONS_KEY,
    append_row,
    config_hash,
    git_commit,
    make_row,
    new_run_id,
)
from experiments.prompting import build_chat_ids, build_prompt_ids


def policy_from_config(method: dict[str, Any], cfg: dict[str, Any] | None = None) -> KVPolicy:
    """The policy of ``config["method"]`` (every setting of a method lives there)."""
    return build_policy(method["name"], **{k: v for k, v in method.items() if k != "name"})


class HarnessTrainingData:
    """:class:`adore.TrainingData` from the harness' datasets and prompts: what a learning method
    (ADORE) trains on. The run's own ``dataset.*`` options apply when it trains on the run's dataset."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg

    def check_trainable(self, dataset: str) -> None:
        self._check_split(dataset)
        if dataset_spec(dataset).task == "stream" and dataset == self.cfg["dataset"]["name"]:
            self.samples(dataset, "train", 1)  # a stream's loader refuses a book that is a training work (cheap)

    @staticmethod
    def _check_split(dataset: str) -> None:
        spec = dataset_spec(dataset)
        if spec.task not in ("generate", "stream") or "split" not in inspect.signature(spec.loader).parameters:
            raise ConfigError(
                f"ADORE's controller needs a dataset with a train split and dataset {dataset!r} has none; "
                f"set method.train_dataset=aclsum (or sharegpt, gsm8k, gutenberg) to use that dataset's controller"
            )

    def samples(self, dataset: str, split: str, limit: int | None) -> list:
        self._check_split(dataset)
        options = dataset_options(self.cfg["dataset"]) if dataset == self.cfg["dataset"]["name"] else {}
        options.pop("split", None)
        options.pop("max_tokens", None)  # how much of the evaluated stream is read, not of the training works
        return load_samples(dataset, limit, split=split, **options)

    def sequences(self, tokenizer, dataset: str, split: str, limit: int, max_length: int):
        """``(ids, prompt length)`` per sample: for a chat dataset, prompt and reference as one chat
        (teacher forcing); for a stream, consecutive windows of ``max_length`` tokens of the split's
        works, taken round-robin (every work's first window, then every work's second, ...) so that
        ``limit`` windows come from as many works as possible (prompt length 0)."""
        spec = dataset_spec(dataset)
        if spec.task == "stream":
            return [
                (ids, 0) for ids in stream_windows(tokenizer, self.samples(dataset, split, None), limit, max_length)
            ]
        out = []
        for sample in self.samples(dataset, split, limit):
            prompt = build_prompt_ids(tokenizer, spec, sample)
            ids = build_chat_ids(tokenizer, spec, sample)
            out.append((ids[:max_length], min(len(prompt), max_length)))
        return out


def stream_windows(tokenizer, samples: list, limit: int, length: int) -> list[list[int]]:
    """Up to ``limit`` windows of ``length`` tokens, round-robin over the works (each work read as the
    stream task reads a text: its tokenizer ids from the start; a short work gives out early)."""
    chars = -(-limit // len(samples)) * length * 6  # ~4 characters per token: text enough for the windows needed
    tokenized = [tokenizer(s.fields["text"][:chars])["input_ids"] for s in samples]
    windows: list[list[int]] = []
    for start in range(0, max(len(ids) for ids in tokenized), length):
        windows += [ids[start : start + length] for ids in tokenized if len(ids) >= start + length]
        if len(windows) >= limit:
            break
    return windows[:limit]


def expected_model_name(cfg: dict[str, Any]) -> str:
    model = cfg["model"]
    return model.get("name") or Path(str(model.get("path") or "")).name


def with_model_name(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config with ``model.name`` filled from ``model.path`` when it is null, so that a run on
    another folder (``model.path=...``) is labelled by that folder, never by the default model's
    name. The default model's folder is named like its old explicit name, so its hashes stay."""
    if cfg["model"].get("name"):
        return cfg
    return {**cfg, "model": {**cfg["model"], "name": expected_model_name(cfg)}}


def run_context(cfg: dict[str, Any]) -> RunContext:
    return RunContext(cfg, expected_model_name(cfg), HarnessTrainingData(cfg))


def start_task(cfg: dict[str, Any], task: str) -> tuple[Run, KVPolicy, DatasetSpec]:
    """The first, cheap steps of a dataset task: the run, the policy (its parameters checked) and the
    dataset's spec, which must be of this task. Everything that can fail on a typo fails here, before
    any data or model is loaded."""
    run = Run(cfg, task=task)
    policy = policy_from_config(cfg["method"], cfg)
    spec = dataset_spec(cfg["dataset"]["name"])
    if spec.task != task:
        raise ConfigError(f"dataset {spec.name!r} is a {spec.task!r} dataset; use task={spec.task}")
    return run, policy, spec


def load_for(cfg: dict[str, Any], policy: KVPolicy) -> LoadedModel:
    """The model, with the policy made ready for it by its own lifecycle hooks."""
    context = run_context(cfg)
    policy.check(context)
    loaded = model_from_config(cfg)
    policy.prepare(context, loaded)
    return loaded


def check_policy_ready(cfg: dict[str, Any], policy: KVPolicy) -> None:
    """Cheap checks that can fail before the model is loaded (the policy's ``check`` hook)."""
    policy.check(run_context(cfg))


def prepare_policy(cfg: dict[str, Any], loaded: LoadedModel, policy: KVPolicy) -> None:
    """Set-up that needs the model (the policy's ``prepare`` hook)."""
    policy.prepare(run_context(cfg), loaded)


def model_from_config(cfg: dict[str, Any]) -> LoadedModel:
    model = cfg["model"]
    if not model.get("path"):
        raise ConfigError("model.path is empty; set model.path=<HF model folder>")
    from adore.core.model_checks import check_model_folder

    check_model_folder(model["path"])
    try:
        loaded = load_model(model["path"], model.get("name", ""), cfg["device"], cfg["dtype"])
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        # What the folder checks cannot see (a corrupt .bin, a tokenizer file that does not parse).
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(
            f"model path {model['path']!r} could not be loaded ({type(error).__name__}: {reason}); "
            "point model.path= at a complete Hugging Face model folder"
        ) from None
    adapter = model.get("adapter")
    if adapter:
        scheme, sep, argument = str(adapter).partition(":")
        if sep and not Path(str(adapter)).exists():  # e.g. adore:K32, resolved by the method that trained it
            adapter = ADAPTER_SCHEMES.get(scheme)(argument, run_context(cfg), loaded.name)
        loaded.model = merge_adapter(loaded.model, adapter)
        loaded.name = adapted_name(loaded.name, adapter)
    return loaded


def trained_positions(model: torch.nn.Module) -> int | None:
    """The positions the model was trained on (``max_position_embeddings``), where its config says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def position_notes(
    loaded: LoadedModel, policy: KVPolicy, longest: int, what: str, quiet: bool = False
) -> dict[str, Any]:
    """Say on stderr when a run's sequences reach past the model's trained positions (a legitimate
    experiment, but not the trained model's regime) or never fill the budget (an evicting method that
    evicts nothing gives full attention's numbers under its own name). Returns the row keys that
    record it: ``{beyond_trained_positions: True}`` or nothing."""
    if policy.m is not None and policy.m >= longest and not quiet:
        print(
            f"warning: method.m={policy.m} holds all of the longest sequence ({longest} tokens, {what}): "
            f"{policy.method_name} evicts nothing, so this run gives full attention's numbers; lower method.m",
            file=sys.stderr,
        )
    reached = longest
    if getattr(policy, "position_mode", None) == "cache" and policy.m is not None:
        reached = min(longest, policy.m + policy.max_step_tokens)  # RoPE positions count within the cache
    trained = trained_positions(loaded.model)
    if trained is None or reached <= trained:
        return {}
    if not quiet:
        print(
            f"warning: {what} reach position {reached}, past the {trained} positions {loaded.name} was trained "
            f"on (max_position_embeddings); the row records {BEYOND_POSITIONS_KEY}: true",
            file=sys.stderr,
        )
    return {BEYOND_POSITIONS_KEY: True}


class PeakMemory:
    """Peak memory over a block, in MB: CUDA's peak allocation, or on CPU the process' resident set
    sampled every ``interval`` seconds by a background thread (``ru_maxrss`` would carry the peak of
    earlier runs in the same process, e.g. a Hydra multirun)."""

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.device, self.interval, self.peak_bytes = device, interval, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while True:
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak_bytes / 2**20


@dataclass
class Run:
    """One run: its id, folder, start time and resolved config; :meth:`finish` writes the row."""

    cfg: dict[str, Any]
    task: str
    run_id: str = field(default_factory=new_run_id)
    started: float = field(default_factory=time.perf_counter)

    @property
    def results_dir(self) -> Path:
        return Path(self.cfg["results_dir"])

    @property
    def run_dir(self) -> Path:
        path = self.results_dir / "runs" / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_config(self) -> None:
        (self.run_dir / "config.json").write_text(json.dumps(self.cfg, indent=2, default=str))

    def finish(self, policy: KVPolicy, loaded: LoadedModel, **metrics: Any) -> dict[str, Any]:
        row = build_row(
            self.cfg,
            run_id=self.run_id,
            task=self.task,
            method=self.cfg["method"]["name"],
            policy=policy,
            dataset=self.cfg["dataset"]["name"],
            loaded=loaded,
            started=self.started,
            run_dir=self.run_dir,
            **metrics,
        )
        try:
            append_row(self.results_dir, row)
        except OSError as error:  # checked before the run started; the folder changed since
            raise ConfigError(
                f"could not append the row to {self.results_dir / 'runs.jsonl'} ({error.strerror or error}); "
                f"the run's outputs are in {self.run_dir}; make the folder writable and run again"
            ) from None
        return row


def build_row(
    cfg: dict[str, Any],
    *,
    run_id: str,
    task: str,
    method: str,
    policy: KVPolicy | None,
    dataset: str,
    loaded: LoadedModel,
    started: float,
    run_dir: Path,
    **metrics: Any,
) -> dict[str, Any]:
    """The one row builder of every task: the fields that identify a run (config hash, commit,
    method and its parameters, model, device, wall time since ``started``) plus the task's ``metrics``.
    ``policy`` is ``None`` for a reference that is not a policy (``hf_generate``)."""
    params = policy.describe() if policy is not None else {}
    return make_row(
        run_id=run_id,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        git_commit=git_commit(),
        config_hash=config_hash(cfg),
        task=task,
        method=method,
        method_params=params,
        m=params.get("m"),
        R=params.get("R"),
        dataset=dataset,
        model=loaded.name,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        wall_s=round(time.perf_counter() - started, 2),
        run_dir=str(run_dir),
        **metrics,
    )
