"""Training ADORE's controller on top-K labels: class-weighted BCE, recall@m on held-out data.

The data are plain tensors (embeddings, positions, label matrices), so the same loop trains on
labels from an LLM (``adore.labels``) or on a synthetic pattern (tests).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
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


def _pair_mask(length: int, K: int, device: torch.device) -> torch.Tensor:
    """Pairs that carry information: past tokens of queries that have more than K of them."""
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril(-1)
    mask[: K + 1] = False
    return mask


def sequence_loss(controller: ImportanceController, sequence: LabelledSequence, K: int) -> torch.Tensor | None:
    """Class-weighted BCE over the informative pairs: positives are weighted by ``#neg / #pos``."""
    T = sequence.length
    mask = _pair_mask(T, K, sequence.labels.device)
    if not bool(mask.any()):
        return None
    positions = torch.arange(T, device=sequence.embeddings.device)[None]
    logits = controller.pair_logits(sequence.embeddings[None], positions)[0][mask]
    target = sequence.labels[mask].float()
    positives = target.sum().clamp(min=1.0)
    pos_weight = (target.numel() - positives) / positives
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


@torch.no_grad()
def recall_at_m(
    controller: ImportanceController, sequences: Sequence[LabelledSequence], m: int, K: int
) -> tuple[float, float]:
    """Mean over queries with more than ``m`` past tokens of ``|top-m(controller) ∩ top-K(true)| / K``,
    and the same for a random pick of ``m`` (``m / #past``)."""
    hits = total = chance = 0.0
    for sequence in sequences:
        T = sequence.length
        if T <= m + 1:
            continue
        positions = torch.arange(T)[None]
        logits = controller.pair_logits(sequence.embeddings[None], positions)[0]
        past = torch.ones(T, T, dtype=torch.bool).tril(-1)
        logits = logits.masked_fill(~past, float("-inf"))
        rows = torch.arange(m + 1, T)
        chosen = torch.zeros(T, T, dtype=torch.bool).scatter_(1, logits.topk(m, dim=-1).indices, True)
        truth = sequence.labels
        hits += (chosen[rows] & truth[rows]).sum().item()
        total += truth[rows].sum().item()
        chance += sum(min(1.0, m / int(t)) * truth[t].sum().item() for t in rows)
    if total == 0:
        return math.nan, math.nan
    return hits / total, chance / total


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
) -> TrainingResult:
    """Adam on the class-weighted BCE, one sequence per step, shuffled each epoch."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    controller = ImportanceController(train[0].embeddings.shape[-1], config)
    optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
    result = TrainingResult(controller)
    order = list(range(len(train)))
    bar = tqdm(total=epochs * len(train), desc="training controller", unit="seq", disable=not progress)
    controller.train()
    for _ in range(epochs):
        rng.shuffle(order)
        epoch = []
        for index in order:
            loss = sequence_loss(controller, train[index], K)
            bar.update(1)
            if loss is None:
                continue
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(controller.parameters(), 1.0)
            optimizer.step()
            epoch.append(loss.item())
            result.step_losses.append(loss.item())
        result.losses.append(sum(epoch) / max(len(epoch), 1))
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
    bar.close()
    controller.trained_positions.fill_(min(max(s.length for s in train), config.max_positions))
    controller.eval()
    if held_out:
        result.recall, result.chance_recall = recall_at_m(controller, held_out, m, K)
    return result
