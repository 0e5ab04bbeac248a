"""The ``train`` task for ADORE, and finding (or training) the controller a run needs.

Artifacts live in ``<adore.artifacts_dir>/adore/<model>/<dataset>/K<K>-<hash>/``, where ``<dataset>``
is the dataset the controller is trained on (``adore.train_dataset``, by default the run's dataset)
and the hash covers the controller, label and training settings and the fine-tuning switch:
``controller.pt``, ``training.json`` (losses, recall@m, timings), ``loss.png`` and, with
``adore.finetune=true``, ``adapter/`` (peft LoRA).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from adore import LoadedModel
from adore.controller import ControllerConfig, ImportanceController
from adore.errors import ConfigError
from adore.finetune import FinetuneExample, LoraConfig, sparse_finetune
from adore.labels import aggregated_attention, topk_past
from adore.method import ADORE
from adore.training import LabelledSequence, train_controller

from .data import DatasetSpec, dataset_spec, load_samples
from .prompting import build_chat_ids, build_prompt_ids
from .runtime import adapted_name, merge_adapter


def controller_config(cfg: dict[str, Any]) -> ControllerConfig:
    return ControllerConfig(**cfg["adore"]["controller"])


def training_dataset(cfg: dict[str, Any]) -> str:
    """The dataset ADORE's controller is trained on: ``adore.train_dataset``, else the run's dataset
    (a stream such as ``gutenberg`` has no train split; there, e.g. ``adore.train_dataset=aclsum``)."""
    return cfg["adore"].get("train_dataset") or cfg["dataset"]["name"]


def artifact_dir(cfg: dict[str, Any], model_name: str, K: int) -> Path:
    adore = cfg["adore"]
    labels = dict(adore["labels"])
    if labels.get("horizon", 1) == 1:
        labels.pop("horizon", None)  # the default keeps the key of checkpoints made before the switch existed
    settings = {
        "controller": adore["controller"],
        "labels": labels,
        "train": adore["train"],
        "finetune": adore["finetune"],
        "lora": adore["lora"] if adore["finetune"] else None,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return Path(adore["artifacts_dir"]) / "adore" / model_name / training_dataset(cfg) / f"K{K}-{digest}"


def training_sequence(tokenizer, spec: DatasetSpec, sample, max_length: int) -> tuple[list[int], int]:
    """Prompt and reference as one chat (teacher forcing); returns ids and the prompt's length."""
    prompt = build_prompt_ids(tokenizer, spec, sample)
    ids = build_chat_ids(tokenizer, spec, sample)
    return ids[:max_length], min(len(prompt), max_length)


def check_trainable(cfg: dict[str, Any]) -> None:
    """One line, before any model is loaded, when the training dataset has no train/val split."""
    name = training_dataset(cfg)
    spec = dataset_spec(name)
    if spec.task != "generate" or "split" not in inspect.signature(spec.loader).parameters:
        raise ConfigError(
            f"ADORE's controller needs a dataset with a train split and dataset {name!r} has none; "
            f"set adore.train_dataset=aclsum (or sharegpt, gsm8k) to use that dataset's controller"
        )


def _split(cfg: dict[str, Any], split: str, limit: int) -> list:
    check_trainable(cfg)
    name = training_dataset(cfg)
    options = {}
    if name == cfg["dataset"]["name"]:  # the run's dataset options; another dataset loads with its defaults
        options = {
            k: v for k, v in cfg["dataset"].items() if k not in ("name", "limit", "task", "split") and v is not None
        }
    return load_samples(name, limit, split=split, **options)


def _labelled(loaded: LoadedModel, sequences: list[list[int]], K: int, labels_cfg: dict, desc: str):
    embedding = loaded.model.get_input_embeddings()
    out = []
    for ids in tqdm(sequences, desc=desc, unit="seq"):
        attention = aggregated_attention(loaded.model, ids, labels_cfg["aggregate"])
        labels = topk_past(attention, K, labels_cfg.get("horizon", 1)).cpu()
        with torch.no_grad():
            embeddings = embedding(torch.tensor(ids, device=loaded.device)).float().cpu()
        out.append(LabelledSequence(embeddings, labels))
    return out


def _plot_losses(step_losses: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(step_losses, linewidth=0.8, alpha=0.5, label="per sequence")
    window = max(1, len(step_losses) // 20)
    smooth = [sum(step_losses[max(0, i - window) : i + 1]) / len(step_losses[max(0, i - window) : i + 1])
              for i in range(len(step_losses))]  # fmt: skip
    axis.plot(smooth, linewidth=1.5, label=f"moving mean ({window})")
    axis.set(xlabel="step", ylabel="class-weighted BCE", title=title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def train_adore(cfg: dict[str, Any], loaded: LoadedModel, policy: ADORE) -> Path:
    """Fine-tune (optional) and train the controller; returns the artifact folder."""
    adore, train = cfg["adore"], cfg["adore"]["train"]
    spec = dataset_spec(training_dataset(cfg))
    out = artifact_dir(cfg, loaded.name, policy.K)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = loaded.tokenizer
    train_pairs = [
        training_sequence(tokenizer, spec, s, train["max_length"]) for s in _split(cfg, "train", train["samples"])
    ]
    held_out_ids = [
        training_sequence(tokenizer, spec, s, train["max_length"])[0] for s in _split(cfg, "val", train["eval_samples"])
    ]
    report: dict[str, Any] = {"model": loaded.name, "dataset": spec.name, "K": policy.K, "m_for_recall": policy.m}
    if adore["finetune"]:
        base = _labelled(loaded, [ids for ids, _ in train_pairs], policy.K, adore["labels"], "top-K masks")
        examples = [FinetuneExample(ids, n, seq.labels) for (ids, n), seq in zip(train_pairs, base, strict=True)]
        losses = sparse_finetune(loaded.model, examples, LoraConfig(**adore["lora"]), out / "adapter", cfg["seed"])
        report["finetune_losses"] = losses
        loaded.model = merge_adapter(loaded.model, str(out / "adapter"))  # labels come from the tuned model
        loaded.model._adore_adapter_merged = True
    train_data = _labelled(loaded, [ids for ids, _ in train_pairs], policy.K, adore["labels"], "top-K labels (train)")
    held_out = _labelled(loaded, held_out_ids, policy.K, adore["labels"], "top-K labels (held out)")
    result = train_controller(
        train_data, held_out, controller_config(cfg), policy.K, policy.m, train["epochs"], train["lr"], cfg["seed"]
    )
    torch.save(
        {"config": controller_config(cfg).to_dict(), "state_dict": result.controller.state_dict()},
        out / "controller.pt",
    )
    _plot_losses(result.step_losses, out / "loss.png", f"ADORE controller, {spec.name}, K={policy.K}")
    report.update(
        epoch_losses=result.losses,
        recall_at_m=result.recall,
        chance_recall_at_m=result.chance_recall,
        train_sequences=len(train_data),
        held_out_sequences=len(held_out),
        seconds=round(time.perf_counter() - started, 1),
    )
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return out


def load_controller(folder: Path, trained_positions: int | None = None) -> ImportanceController:
    """Load a checkpoint; ``trained_positions`` (the training ``max_length``) completes checkpoints
    written before the controller recorded it."""
    checkpoint = torch.load(folder / "controller.pt", map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    if "trained_positions" not in state:
        state["trained_positions"] = torch.tensor(trained_positions or checkpoint["config"]["max_positions"])
    controller = ImportanceController(state["project.weight"].shape[1], ControllerConfig(**checkpoint["config"]))
    controller.load_state_dict(state)
    return controller.eval()


def check_controller_available(cfg: dict[str, Any], policy: ADORE) -> None:
    """Fail before loading the model when no controller exists and training is disabled, or when
    one would be trained on a dataset without a train split."""
    model = cfg["model"]
    if policy.scorer == "oracle" or model.get("adapter"):
        return  # with an adapter the model's name (and so the folder) is only known after loading
    name = model.get("name") or Path(model["path"]).name
    folder = artifact_dir(cfg, name, policy.K)
    if (folder / "controller.pt").is_file():
        return
    if cfg["adore"]["train_if_missing"]:
        check_trainable(cfg)
    else:
        raise ConfigError(
            f"no ADORE controller at {folder}; run `python run.py task=train method=adore "
            f"dataset={training_dataset(cfg)}` or set adore.train_if_missing=true"
        )


def prepare_adore(cfg: dict[str, Any], loaded: LoadedModel, policy: ADORE) -> None:
    """Bind a trained controller to the policy (training it first when allowed), and merge the sparse
    fine-tuning adapter when ``adore.finetune`` is on."""
    if policy.scorer == "oracle":
        return
    folder = artifact_dir(cfg, loaded.name, policy.K)
    if not (folder / "controller.pt").is_file():
        if not cfg["adore"]["train_if_missing"]:
            raise ConfigError(
                f"no ADORE controller at {folder}; run `python run.py task=train method=adore "
                f"dataset={training_dataset(cfg)}` or set adore.train_if_missing=true"
            )
        print(f"no controller for this configuration yet: training one into {folder}")
        train_adore(cfg, loaded, policy)
    if cfg["adore"]["finetune"]:
        if not getattr(loaded.model, "_adore_adapter_merged", False):
            loaded.model = merge_adapter(loaded.model, str(folder / "adapter"))
            loaded.model._adore_adapter_merged = True
        loaded.name = adapted_name(loaded.name, str(folder / "adapter"))
    controller = load_controller(folder, cfg["adore"]["train"]["max_length"]).to(loaded.device)
    policy.bind(controller, loaded.model.get_input_embeddings(), checkpoint=folder.name)
    policy.training = {"labels_horizon": cfg["adore"]["labels"].get("horizon", 1), "finetune": cfg["adore"]["finetune"]}


def run_train(cfg: dict[str, Any]) -> Path:
    """``task=train method=adore``: train into the artifact folder, print the summary."""
    from .runtime import model_from_config, policy_from_config

    policy = policy_from_config(cfg["method"], cfg)
    if not isinstance(policy, ADORE):
        raise ConfigError("task=train trains ADORE's controller; use method=adore")
    loaded = model_from_config(cfg)
    folder = train_adore(cfg, loaded, policy)
    report = json.loads((folder / "training.json").read_text())
    print(
        f"controller saved to {folder}\n"
        f"recall@{policy.m} of the true top-{policy.K} set on {report['held_out_sequences']} held-out sequences: "
        f"{report['recall_at_m']:.3f} (random choice: {report['chance_recall_at_m']:.3f}); "
        f"loss {report['epoch_losses'][0]:.3f} -> {report['epoch_losses'][-1]:.3f}; {report['seconds']} s"
    )
    return folder
