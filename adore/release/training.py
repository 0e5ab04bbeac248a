"""Training ADORE's controller on top-K labels: class-weighted BCE, recall@m on held-out data.

The data are plain tensors (embeddings, positions, label matrices), so the same loop trains on
labels from an LLM (``adore.labels``) or on a synthetic pattern (tests).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from .controller import ControllerConfig, ImportanceController


@dataclass
class LabelledSequence:
    """One training sequence: frozen embeddings ``[T, E]`` and labels ``y [T, T]`` (bool, ``y[t, i]``
    for past tokens ``i < t``)."""

    embeddings: torch.Tensor
    labels: torch.Tensor

    @property
    def length(self) -> int:
        return self.labels.shape[0]


@dataclass
class TrainingResult:
    controller: ImportanceController
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    step_losses: list[float] = field(default_factory=list)
    recall: float | None = None  # recall@m of the true top-K set on held-out sequences
    chance_recall: float | None = None  # the same for a random choice of m past tokens
    resumed_after_epoch: int = 0  # epochs an interrupted run had finished (train_controller's state_path)


def _pair_mask(length: int, K: int, device: torch.device) -> torch.Tensor:
    """Pairs that carry information: past tokens of queries that have more than K of them."""
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril(-1)
    mask[: K + 1] = False
    return mask


ROW_CHUNK = 512  # query rows per piece of a long sequence's loss (memory O(ROW_CHUNK * T), not O(T^2))


def _rows_loss(
    controller: ImportanceController,
    u: torch.Tensor,
    static: torch.Tensor,
    keys: torch.Tensor | None,
    rows: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor,
) -> torch.Tensor:
    """Summed weighted BCE of query ``rows`` (``[C]``) against every key: ``labels``/``mask`` ``[C, T]``.

    The mask weighs pairs instead of selecting them: a boolean selection of millions of pairs costs
    more than the loss of the pairs it drops."""
    positions = torch.arange(u.shape[1], device=u.device)[None]
    logits = controller.logits(u[:, rows], rows[None], static, keys, positions)[0]
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels.float(), weight=mask.float(), pos_weight=pos_weight, reduction="sum"
    )


def sequence_loss(
    controller: ImportanceController, sequence: LabelledSequence, K: int, row_chunk: int = ROW_CHUNK
) -> torch.Tensor | None:
    """Class-weighted BCE over the informative pairs: positives are weighted by ``#neg / #pos``.

    The GRU runs once over the whole sequence; the pair logits are formed ``row_chunk`` query rows at
    a time and recomputed in the backward pass (activation checkpointing), so a sequence as long as
    an evaluated stream trains in ``O(row_chunk * T)`` memory."""
    T = sequence.length
    mask = _pair_mask(T, K, sequence.labels.device)
    count = int(mask.sum())
    if count == 0:
        return None
    positives = (sequence.labels & mask).sum().float().clamp(min=1.0)
    pos_weight = (count - positives) / positives
    u, _ = controller.encode(sequence.embeddings[None], torch.arange(T, device=sequence.embeddings.device)[None])
    static, keys = controller.token_terms(u)
    total = u.new_zeros(())
    for start in range(0, T, row_chunk):
        rows = torch.arange(start, min(start + row_chunk, T), device=u.device)
        args = (controller, u, static, keys, rows, sequence.labels[rows], mask[rows], pos_weight)
        chunked = T > row_chunk  # one piece needs no recomputation
        total = total + (checkpoint(_rows_loss, *args, use_reentrant=False) if chunked else _rows_loss(*args))
    return total / count


def _recall_counts(scores: torch.Tensor, truth: torch.Tensor, m: int) -> tuple[float, float, float]:
    """Hits of the top-``m`` past tokens by ``scores [T, T]`` among the true sets ``truth [T, T]``, the
    true count, and the hits a random pick of ``m`` would expect, over queries with more than ``m``
    past tokens."""
    T = scores.shape[0]
    if T <= m + 1:
        return 0.0, 0.0, 0.0
    past = torch.ones(T, T, dtype=torch.bool).tril(-1)
    scores = scores.masked_fill(~past, float("-inf"))
    rows = torch.arange(m + 1, T)
    chosen = torch.zeros(T, T, dtype=torch.bool).scatter_(1, scores.topk(m, dim=-1).indices, True)
    true_counts = truth[rows].sum(dim=-1).double()
    chance = (m / rows.double()).clamp(max=1.0) @ true_counts
    return (chosen[rows] & truth[rows]).sum().item(), true_counts.sum().item(), chance.item()


def _ratios(counts: list[tuple[float, float, float]]) -> tuple[float, float]:
    hits, total, chance = (sum(column) for column in zip(*counts, strict=True)) if counts else (0, 0, 0)
    return (math.nan, math.nan) if total == 0 else (hits / total, chance / total)


@torch.no_grad()
def recall_at_m(
    controller: ImportanceController, sequences: Sequence[LabelledSequence], m: int, K: int
) -> tuple[float, float]:
    """Mean over queries with more than ``m`` past tokens of ``|top-m(controller) ∩ top-K(true)| / K``,
    and the same for a random pick of ``m`` (``m / #past``)."""
    counts = []
    for sequence in sequences:
        logits = controller.pair_logits(sequence.embeddings[None], torch.arange(sequence.length)[None])[0]
        counts.append(_recall_counts(logits, sequence.labels, m))
    return _ratios(counts)


def scores_recall_at_m(scores: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], m: int) -> tuple[float, float]:
    """:func:`recall_at_m` of any scorer given as score matrices ``[T, T]`` (e.g. the current query's
    attention, ADORE's training-free scorer), against label matrices of the same sequences."""
    return _ratios([_recall_counts(s, y, m) for s, y in zip(scores, labels, strict=True)])


def train_controller(
    train: Sequence[LabelledSequence],
    held_out: Sequence[LabelledSequence],
    config: ControllerConfig,
    K: int,
    m: int,
    epochs: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    state_path: Path | None = None,
) -> TrainingResult:
    """Adam on the class-weighted BCE, one sequence per step, shuffled each epoch.

    With ``state_path``, everything the next epoch depends on (weights, optimizer moments, both random
    generators, the shuffled order, the losses) is written there after every epoch, and a run that
    finds it resumes after the last finished epoch: a training run longer than a session ends with
    the controller an uninterrupted run would have trained."""
    controller, optimizer, rng = _fresh(train[0].embeddings.shape[-1], config, lr, seed)
    result = TrainingResult(controller)
    order = list(range(len(train)))
    run = _run_fingerprint(train, config, K, lr, seed) if state_path else ""
    done = _resume(state_path, run, epochs, controller, optimizer, rng, result, order) if state_path else 0
    if state_path and state_path.is_file() and not done:  # a state that failed to load may have half-filled them
        controller, optimizer, rng = _fresh(train[0].embeddings.shape[-1], config, lr, seed)
        result, order = TrainingResult(controller), list(range(len(train)))
    result.resumed_after_epoch = done
    bar = tqdm(total=epochs * len(train), initial=min(done, epochs) * len(train), desc="training controller",
               unit="seq", disable=not progress)  # fmt: skip
    controller.train()
    for epoch in range(done, epochs):
        rng.shuffle(order)
        losses = []
        for index in order:
            loss = sequence_loss(controller, train[index], K)
            bar.update(1)
            if loss is None:
                continue
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(controller.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            result.step_losses.append(loss.item())
        result.losses.append(sum(losses) / max(len(losses), 1))
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
        if state_path is not None:
            _save_state(state_path, run, epoch + 1, controller, optimizer, rng, result, order)
    bar.close()
    controller.trained_positions.fill_(min(max(s.length for s in train), config.max_positions))
    controller.eval()
    if held_out:
        result.recall, result.chance_recall = recall_at_m(controller, held_out, m, K)
    return result


def _fresh(embed_dim: int, config: ControllerConfig, lr: float, seed: int):
    """A seeded controller, its optimizer and the shuffling generator, as every run starts them."""
    torch.manual_seed(seed)
    controller = ImportanceController(embed_dim, config)
    return controller, torch.optim.Adam(controller.parameters(), lr=lr), random.Random(seed)


def _run_fingerprint(train: Sequence[LabelledSequence], config: ControllerConfig, K: int, lr: float, seed: int) -> str:
    """What a resumed run must share with the one that wrote the state: its settings and its data
    (every sequence's embeddings and labels, byte for byte)."""
    digest = hashlib.sha256(json.dumps([config.to_dict(), K, lr, seed]).encode())
    for sequence in train:
        digest.update(sequence.embeddings.contiguous().numpy().tobytes())
        digest.update(sequence.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _save_state(path: Path, run: str, epochs_done: int, controller, optimizer, rng, result, order) -> None:
    state = {
        "run": run,
        "epochs_done": epochs_done,
        "controller": controller.state_dict(),
        "optimizer": optimizer.state_dict(),
        "python_rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "order": list(order),
        "losses": result.losses,
        "step_losses": result.step_losses,
    }
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(state, partial)
    os.replace(partial, path)  # a run killed while writing keeps the previous epoch's state


def _resume(path: Path, run: str, epochs: int, controller, optimizer, rng, result, order) -> int:
    """Load the state of an interrupted run into the fresh objects; the epochs it finished (0: none,
    or a state that does not load, or that another run wrote: other settings, data or seed)."""
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["run"] != run:
            raise ValueError("another run wrote it (other settings, seed or training data)")
        if not 0 < state["epochs_done"] <= epochs:
            raise ValueError(f"it finished {state['epochs_done']} epochs of this run's {epochs}")
        controller.load_state_dict(state["controller"])
        optimizer.load_state_dict(state["optimizer"])
        version, internal, gauss = state["python_rng"]
        rng.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(state["torch_rng"])
        order[:] = state["order"]
        result.losses[:] = state["losses"]
        result.step_losses[:] = state["step_losses"]
    except Exception as error:  # a file cut short, from an older layout, or from another run
        print(f"ignoring the training state {path} ({type(error).__name__}: {error}); training from the start")
        return 0
    print(f"resuming the controller's training after epoch {state['epochs_done']} ({path})")
    return state["epochs_done"]
