"""ADORE's controller artifacts: where they live, training them, and binding one to a run's policy.

Artifacts live in ``<artifacts_dir>/adore/<model>/<dataset>/K<K>-<hash>/``, where ``<dataset>`` is
the dataset the controller is trained on (``method.train_dataset``, by default the run's dataset)
and the hash covers the controller, label and training settings and the fine-tuning switch:
``controller.pt``, ``training.json`` (losses, recall@m, timings), ``loss.png`` and, with
``method.finetune=true``, ``adapter/`` (peft LoRA); while training, ``training_state.pt`` (a stopped
run resumes after its last epoch). Labels are kept per text under
``<artifacts_dir>/adore/<model>/labels/<dtype>[+lora-<digest>]/`` (:mod:`.label_cache`).

Training data comes through the run's :class:`~adore.TrainingData`; nothing here knows a dataset.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from adore import ConfigError, LoadedModel, RunContext, merge_adapter
from adore.core.models import adapted_name
from adore.core.plotting import new_figure, save_figure

from .controller import ControllerConfig, ImportanceController
from .finetune import FinetuneExample, LoraConfig, sparse_finetune
from .label_cache import LabelCache
from .labels import aggregated_attention, labels_for, labels_from_top, top_indices
from .settings import SETTINGS_DEFAULTS
from .training import LabelledSequence, scores_recall_at_m, train_controller

if TYPE_CHECKING:
    from .policy import ADORE


LATER_CONTROLLER_DEFAULTS = {"positions": "absolute", "cell": "gru"}


def training_dataset(policy: ADORE, context: RunContext) -> str:
    """The dataset the controller is trained on: ``method.train_dataset``, else the run's dataset
    (``gutenberg``'s train split is its other works; a dataset without splits, such as ``text``,
    needs e.g. ``method.train_dataset=gutenberg``)."""
    return policy.train_dataset or context.dataset


def artifact_dir(policy: ADORE, model_name: str, dataset: str, finetune: bool | None = None) -> Path:
    labels = dict(policy.labels)
    if labels.get("horizon", 1) == 1:
        labels.pop("horizon", None)  # the default keeps the key of checkpoints made before the switch existed
    if labels.get("target", "current") == "current":
        labels.pop("target", None)  # likewise
    # Controller settings added later key no folder at their defaults (older checkpoints keep theirs).
    controller = {k: v for k, v in policy.controller.items() if LATER_CONTROLLER_DEFAULTS.get(k, object()) != v}
    finetune = policy.finetune if finetune is None else finetune
    settings = {
        "controller": controller,
        "labels": labels,
        "train": policy.train,
        "finetune": finetune,
        "lora": policy.lora if finetune else None,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return Path(policy.artifacts_dir) / "adore" / model_name / dataset / f"K{policy.K}-{digest}"


def _overrides(prefix: str, value: Any, default: Any) -> list[str]:
    """``key=value`` overrides that turn ``default`` into ``value``: nested settings one dotted key
    each (``method.controller.width=64``), so that the command parses and keeps every other default."""
    if isinstance(value, dict) and isinstance(default, dict):
        return [o for k in sorted(value) for o in _overrides(f"{prefix}.{k}", value[k], default.get(k))]
    if value == default:
        return []
    text = "null" if value is None else json.dumps(value) if isinstance(value, bool) else str(value)
    return [shlex.quote(f"{prefix}={text}")]


def _train_command(policy: ADORE, dataset: str) -> str:
    """The command that trains what this policy looks for, with the policy's own settings wherever
    they differ from the defaults (its artifacts folder, controller, labels, training)."""
    moved = [o for k, v in sorted(SETTINGS_DEFAULTS.items()) if k not in ("train_if_missing", "slicing")
             for o in _overrides(f"method.{k}", getattr(policy, k), v)]  # fmt: skip
    return " ".join(["python run.py task=train method=adore", f"method.K={policy.K}", f"dataset={dataset}", *moved])


def _require_trainable(policy: ADORE, context: RunContext) -> None:
    if context.data is None:
        raise ConfigError("this run cannot train ADORE's controller (no training data); train it with task=train")
    context.data.check_trainable(training_dataset(policy, context))


def _sequences(policy: ADORE, context: RunContext, loaded: LoadedModel, split: str, limit: int):
    _require_trainable(policy, context)
    return context.data.sequences(
        loaded.tokenizer, training_dataset(policy, context), split, limit, policy.train["max_length"]
    )


def label_cache(policy: ADORE, loaded: LoadedModel, adapter: Path | None = None) -> LabelCache:
    """Where the top-K picks of ``loaded`` are kept: by its name and dtype (a bfloat16 model can rank
    near-ties differently), and with a merged ``adapter``, by a digest of the adapter's files (a
    fine-tune that reruns into the same folder may write other weights)."""
    model = f"{loaded.name.replace('/', '_')}/labels/{str(loaded.dtype).removeprefix('torch.')}"
    if adapter is not None:
        digest = hashlib.sha256()
        for file in sorted(adapter.iterdir()):
            digest.update(file.name.encode() + file.read_bytes())
        model += f"+lora-{digest.hexdigest()[:12]}"
    labels = policy.labels
    return LabelCache(
        Path(policy.artifacts_dir) / "adore" / model, labels["aggregate"], labels.get("target", "current"), policy.K
    )


def _labelled(loaded: LoadedModel, sequences: list[list[int]], cache: LabelCache, horizon: int, desc: str):
    """Labelled sequences, their top-K picks read from ``cache`` where an earlier run computed them."""
    embedding = loaded.model.get_input_embeddings()
    out = []
    for ids in tqdm(sequences, desc=desc, unit="seq"):
        top = cache.load(ids)
        if top is None:
            top = top_indices(aggregated_attention(loaded.model, ids, cache.aggregate), cache.K, cache.target).cpu()
            cache.save(ids, top)
        labels = labels_from_top(top, horizon)
        with torch.no_grad():
            embeddings = embedding(torch.tensor(ids, device=loaded.device)).float().cpu()
        out.append(LabelledSequence(embeddings, labels))
    return out


def _plot_losses(step_losses: list[float], path: Path, title: str) -> None:
    figure, axis = new_figure(figsize=(6, 3.5))
    axis.plot(step_losses, linewidth=0.8, alpha=0.5, label="per sequence")
    window = max(1, len(step_losses) // 20)
    smooth = [sum(step_losses[max(0, i - window) : i + 1]) / len(step_losses[max(0, i - window) : i + 1])
              for i in range(len(step_losses))]  # fmt: skip
    axis.plot(smooth, linewidth=1.5, label=f"moving mean ({window})")
    axis.set(xlabel="step", ylabel="class-weighted BCE", title=title)
    axis.legend()
    save_figure(figure, path)


def train_adore(context: RunContext, loaded: LoadedModel, policy: ADORE) -> Path:
    """Fine-tune (optional) and train the controller; returns the artifact folder."""
    train = policy.train
    dataset = training_dataset(policy, context)
    out = artifact_dir(policy, loaded.name, dataset)
    started = time.perf_counter()
    train_pairs = _sequences(policy, context, loaded, "train", train["samples"])
    held_out_ids = [ids for ids, _ in _sequences(policy, context, loaded, "val", train["eval_samples"])]
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": loaded.name, "dataset": dataset, "K": policy.K, "m_for_recall": policy.m}
    config = ControllerConfig(**policy.controller)
    seed = context.config.get("seed", 0)
    horizon = policy.labels.get("horizon", 1)
    if policy.finetune:
        cache = label_cache(policy, loaded)
        base = _labelled(loaded, [ids for ids, _ in train_pairs], cache, horizon, "top-K masks")
        examples = [FinetuneExample(ids, n, seq.labels) for (ids, n), seq in zip(train_pairs, base, strict=True)]
        losses = sparse_finetune(loaded.model, examples, LoraConfig(**policy.lora), out / "adapter", seed)
        report["finetune_losses"] = losses
        base_name = loaded.name
        loaded.model = merge_adapter(loaded.model, str(out / "adapter"))  # labels come from the tuned model
        loaded.model._adore_adapter = (str(out / "adapter"), base_name)
    # After a fine-tune the labels come from the tuned model.
    cache = label_cache(policy, loaded, out / "adapter" if policy.finetune else None)
    train_data = _labelled(loaded, [ids for ids, _ in train_pairs], cache, horizon, "top-K labels (train)")
    held_out = _labelled(loaded, held_out_ids, cache, horizon, "top-K labels (held out)")
    state = out / "training_state.pt"  # per epoch: a stopped run resumes there (labels come from the cache)
    result = train_controller(
        train_data, held_out, config, policy.K, policy.m, train["epochs"], train["lr"], seed, state_path=state
    )
    torch.save({"config": config.to_dict(), "state_dict": result.controller.state_dict()}, out / "controller.pt")
    _plot_losses(result.step_losses, out / "loss.png", f"ADORE controller, {dataset}, K={policy.K}")
    report.update(
        epoch_losses=result.losses,
        recall_at_m=result.recall,
        chance_recall_at_m=result.chance_recall,
        train_sequences=len(train_data),
        held_out_sequences=len(held_out),
        seconds=round(time.perf_counter() - started, 1),  # this run's, when it resumed an earlier one
    )
    if result.resumed_after_epoch:
        report["resumed_after_epoch"] = result.resumed_after_epoch
    (out / "training.json").write_text(json.dumps(report, indent=2))
    state.unlink(missing_ok=True)
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


def controller_problem(folder: Path) -> str | None:
    """Why ``controller.pt`` in ``folder`` cannot be used (``None`` when it loads): a truncated or
    foreign file fails inside ``torch.load`` with a long traceback otherwise."""
    try:
        load_controller(folder)
    except Exception as error:  # zip, pickle and shape errors come in many types
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        return f"{type(error).__name__}: {reason}"
    return None


def _unreadable(folder: Path, problem: str, policy: ADORE, dataset: str) -> ConfigError:
    return ConfigError(
        f"the ADORE controller {folder / 'controller.pt'} cannot be read ({problem}); delete it and run "
        f"`{_train_command(policy, dataset)}`, or set method.train_if_missing=true to retrain it"
    )


def _missing(folder: Path, policy: ADORE, dataset: str) -> ConfigError:
    return ConfigError(
        f"no ADORE controller at {folder}; run `{_train_command(policy, dataset)}` or set method.train_if_missing=true"
    )


def check_controller_available(context: RunContext, policy: ADORE) -> None:
    """Fail before loading the model when no controller exists and training is disabled, or when
    one would be trained on a dataset without a train split."""
    if policy.scorer == "oracle":
        return
    dataset = training_dataset(policy, context)
    if context.data is not None:
        context.data.check_trainable(dataset)  # also where a controller exists: a stream's book must be held out
    if context.config.get("model", {}).get("adapter"):
        return  # with an adapter the model's name (and so the folder) is only known after loading
    folder = artifact_dir(policy, context.model_name, dataset)
    if (folder / "controller.pt").is_file():
        problem = controller_problem(folder)
        if problem is None:
            return
        if not policy.train_if_missing:
            raise _unreadable(folder, problem, policy, dataset)
    elif not policy.train_if_missing:
        raise _missing(folder, policy, dataset)
    _require_trainable(policy, context)  # it will be trained: say now if it cannot be


def attention_recall(context: RunContext, loaded: LoadedModel, policy: ADORE) -> dict[str, float]:
    """The training-free scorer's recall@m of the true top-K on the held-out split (the measure the
    controllers report), or nothing where the run has no held-out data."""
    if context.data is None:
        return {}
    try:
        context.data.check_trainable(training_dataset(policy, context))
    except ConfigError:
        return {}
    held_out = [ids for ids, _ in _sequences(policy, context, loaded, "val", policy.train["eval_samples"])]
    scores, labels = [], []
    for ids in tqdm(held_out, desc="attention recall (held out)", unit="seq"):
        attention = aggregated_attention(loaded.model, ids, policy.labels["aggregate"]).cpu()
        scores.append(attention)
        labels.append(labels_for(attention, policy.K, policy.labels))
    recall, _ = scores_recall_at_m(scores, labels, policy.m)
    return {"recall_at_m": round(recall, 4)}


TRAINING_AMOUNT = ("train_sequences", "train_epochs")  # row parameters, in this order


def training_amount(report: dict) -> dict[str, int]:
    """How much a controller trained, from its ``training.json``: ``train_sequences`` and
    ``train_epochs`` (those it recorded)."""
    epochs = len(report["epoch_losses"]) if report.get("epoch_losses") else None
    amount = dict(zip(TRAINING_AMOUNT, (report.get("train_sequences"), epochs), strict=True))
    return {key: value for key, value in amount.items() if value is not None}


def prepare_adore(context: RunContext, loaded: LoadedModel, policy: ADORE) -> None:
    """Bind a trained controller to the policy (training it first when allowed), and merge the sparse
    fine-tuning adapter when ``method.finetune`` is on."""
    if policy.scorer == "oracle":
        policy.training = attention_recall(context, loaded, policy)
        return
    # An earlier ADORE entry of the same run (task=throughput) may have merged its sparse fine-tune
    # into the shared model and renamed it: artifacts are keyed by the model as it was before that.
    merged: tuple[str, str] | None = getattr(loaded.model, "_adore_adapter", None)  # (adapter, name before)
    dataset = training_dataset(policy, context)
    folder = artifact_dir(policy, merged[1] if merged else loaded.name, dataset)
    adapter = str(folder / "adapter")
    if merged and merged[0] != adapter:
        raise ConfigError(
            f"this run's model already has ADORE's sparse fine-tune {merged[0]} merged, and these ADORE "
            f"settings need another model ({'its fine-tune ' + adapter if policy.finetune else 'the base model'}); "
            "run ADORE entries with different method.finetune or training settings in separate runs"
        )
    problem = controller_problem(folder) if (folder / "controller.pt").is_file() else None
    if problem is not None:
        if not policy.train_if_missing:
            raise _unreadable(folder, problem, policy, dataset)
        print(f"the controller in {folder} cannot be read ({problem}): training a new one in its place")
        train_adore(context, loaded, policy)
    elif not (folder / "controller.pt").is_file():
        if not policy.train_if_missing:
            raise _missing(folder, policy, dataset)
        print(f"no controller for this configuration yet: training one into {folder}")
        train_adore(context, loaded, policy)
    if policy.finetune and not merged:
        if getattr(loaded.model, "_adore_adapter", None) is None:  # train_adore merges what it tunes
            loaded.model = merge_adapter(loaded.model, adapter)
            loaded.model._adore_adapter = (adapter, loaded.name)
        loaded.name = adapted_name(loaded.name, adapter)
    controller = load_controller(folder, policy.train["max_length"]).to(loaded.device)
    policy.bind(controller, loaded.model.get_input_embeddings(), checkpoint=folder.name)
    report = json.loads((folder / "training.json").read_text()) if (folder / "training.json").is_file() else {}
    # train_length: the longest sequence the controller trained on, as it recorded (chats are often
    # shorter than train.max_length); past it a stream is extrapolation.
    policy.training = {"labels_horizon": policy.labels.get("horizon", 1), "finetune": policy.finetune,
                       "positions": controller.config.positions,
                       "train_length": int(controller.trained_positions)}  # fmt: skip
    if policy.labels.get("target", "current") != "current":  # rows before the switch keep their parameters
        policy.training["labels_target"] = policy.labels["target"]
    policy.training.update(training_amount(report))  # two controllers of one length may differ in both
    if report.get("recall_at_m") is not None and report.get("m_for_recall") == policy.m:
        policy.training["recall_at_m"] = round(report["recall_at_m"], 4)  # held out, at this run's m


def train_summary(context: RunContext, loaded: LoadedModel, policy: ADORE) -> str:
    """``task=train method=adore``: train into the artifact folder; the summary line."""
    folder = train_adore(context, loaded, policy)
    report = json.loads((folder / "training.json").read_text())
    return (
        f"controller saved to {folder}\n"
        f"recall@{policy.m} of the true top-{policy.K} set on {report['held_out_sequences']} held-out sequences: "
        f"{report['recall_at_m']:.3f} (random choice: {report['chance_recall_at_m']:.3f}); "
        f"loss {report['epoch_losses'][0]:.3f} -> {report['epoch_losses'][-1]:.3f}; {report['seconds']} s"
    )
