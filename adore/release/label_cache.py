"""Top-K picks on disk, so that a controller's training labels are computed once per text.

Labels of one 8,192-token window cost about 140 s of full attention on 2 CPU cores; a long training
run that stops (a session's end, Ctrl-C) or a second controller on the same text (another horizon,
more epochs) reads them back. What is kept is :func:`~adore.release.labels.top_indices`: ``T * K``
token indices, not the ``T * T`` matrix, so the horizon is applied after loading and every horizon
shares one file.

A file is named by what determines its content: the model (with any merged adapter), the
aggregation over layers and heads, the ranking target, ``K``, and the token ids themselves.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class LabelCache:
    """``<folder>/<aggregate>-<target>-K<K>/<sha256 of the token ids>.pt``, one per sequence."""

    folder: Path
    aggregate: str
    target: str
    K: int

    def path(self, ids: list[int]) -> Path:
        digest = hashlib.sha256(torch.tensor(ids, dtype=torch.int64).numpy().tobytes()).hexdigest()[:20]
        return self.folder / f"{self.aggregate}-{self.target}-K{self.K}" / f"{digest}.pt"

    def load(self, ids: list[int]) -> torch.Tensor | None:
        """The cached ``[T, min(K, T)]`` picks of ``ids``, or ``None`` (absent, unreadable or of another
        length: it is then recomputed and written again)."""
        path = self.path(ids)
        if not path.is_file():
            return None
        try:
            top = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a file cut short by a killed run: recompute it
            return None
        expected = (len(ids), min(self.K, len(ids)))
        return top.long() if isinstance(top, torch.Tensor) and tuple(top.shape) == expected else None

    def save(self, ids: list[int], top: torch.Tensor) -> None:
        """Write atomically (a run killed mid-write leaves no half file under the final name)."""
        path = self.path(ids)
        path.parent.mkdir(parents=True, exist_ok=True)
        small = top.to(torch.int16 if len(ids) <= torch.iinfo(torch.int16).max else torch.int32).cpu()
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(small, partial)
        os.replace(partial, path)
