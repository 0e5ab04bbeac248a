"""Shared pieces of every task: building the policy and model from the config, the run folder."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from adore import KVPolicy, LoadedModel, build_policy, load_model
from adore.errors import ConfigError

from .data import DatasetSpec, dataset_spec
from .results import append_row, config_hash, git_commit, make_row, new_run_id


def policy_from_config(method: dict[str, Any], cfg: dict[str, Any] | None = None) -> KVPolicy:
    params = {k: v for k, v in method.items() if k != "name"}
    if method["name"] == "adore" and cfg is not None:
        params.setdefault("slicing", cfg["adore"]["slicing"])  # the public key: adore.slicing
    return build_policy(method["name"], **params)


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
    """The model, with the policy made ready for it (ADORE: its controller, trained when missing)."""
    check_policy_ready(cfg, policy)
    loaded = model_from_config(cfg)
    prepare_policy(cfg, loaded, policy)
    return loaded


def check_policy_ready(cfg: dict[str, Any], policy: KVPolicy) -> None:
    """Cheap checks that can fail before the model is loaded (ADORE: a missing controller)."""
    from adore.method import ADORE

    if isinstance(policy, ADORE):
        from .adore_training import check_controller_available

        check_controller_available(cfg, policy)


def prepare_policy(cfg: dict[str, Any], loaded: LoadedModel, policy: KVPolicy) -> None:
    """Method-specific preparation that needs the model and the data (ADORE: its trained controller)."""
    from adore.method import ADORE

    if isinstance(policy, ADORE):
        from .adore_training import prepare_adore

        prepare_adore(cfg, loaded, policy)


def model_from_config(cfg: dict[str, Any]) -> LoadedModel:
    model = cfg["model"]
    if not model.get("path"):
        raise ConfigError("model.path is empty; set model.path=<HF model folder>")
    loaded = load_model(model["path"], model.get("name", ""), cfg["device"], cfg["dtype"])
    adapter = model.get("adapter")
    if adapter:
        if str(adapter).startswith("adore:K"):  # the sparse fine-tune ADORE trained for this model and dataset
            from .adore_training import artifact_dir

            folder = artifact_dir({**cfg, "adore": {**cfg["adore"], "finetune": True}}, loaded.name, adapter_k(adapter))
            adapter = str(folder / "adapter")
            if not (folder / "adapter").is_dir():
                raise ConfigError(
                    f"no ADORE adapter at {adapter}; train it with `python run.py task=train method=adore "
                    f"adore.finetune=true method.K={adapter_k(model['adapter'])} dataset={cfg['dataset']['name']}`"
                )
        loaded.model = merge_adapter(loaded.model, adapter)
        loaded.name = adapted_name(loaded.name, adapter)
    return loaded


def adapter_k(value: str) -> int:
    return int(value[len("adore:K") :])


def adapted_name(name: str, adapter: str) -> str:
    """``smollm2-135m+lora:K32-abc/adapter``: the row's ``model`` says which adapter was merged."""
    path = Path(adapter)
    return f"{name}+lora:{path.parent.name}/{path.name}"


def merge_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """Load a peft LoRA adapter and merge it into the weights (decoding then costs nothing extra)."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"model.adapter {adapter!r} has no adapter_config.json; give a peft adapter folder")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()


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
        params = policy.describe()
        row = make_row(
            run_id=self.run_id,
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            git_commit=git_commit(),
            config_hash=config_hash(self.cfg),
            task=self.task,
            method=self.cfg["method"]["name"],
            method_params=params,
            m=params.get("m"),
            R=params.get("R"),
            dataset=self.cfg["dataset"]["name"],
            model=loaded.name,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            wall_s=round(time.perf_counter() - self.started, 2),
            run_dir=str(self.run_dir),
            **metrics,
        )
        append_row(self.results_dir, row)
        return row
