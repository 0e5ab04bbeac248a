"""What a policy's lifecycle hooks see of the run (see :class:`~adore.core.policy.KVPolicy`).

A method with learned parts (ADORE's controller) needs the run's config, the name of the model it
serves and training sequences from a dataset. The core does not know datasets or prompts: the
harness hands them in through :class:`TrainingData`, so methods depend on an interface, never on the
tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class TrainingData(Protocol):
    """Training sequences for methods that learn something (implemented by the harness)."""

    def check_trainable(self, dataset: str) -> None:
        """Raise a one-line ``ConfigError`` when ``dataset`` has no train/val split."""

    def sequences(
        self, tokenizer: Any, dataset: str, split: str, limit: int, max_length: int
    ) -> list[tuple[list[int], int]]:
        """``(token ids of prompt + reference, prompt length)`` for the first ``limit`` samples of a split."""


@dataclass
class RunContext:
    """The run as a policy sees it.

    Attributes:
        config: the run's resolved config (read it, do not change it).
        model_name: the name rows will carry for the model before any adapter is merged.
        data: training sequences, where the harness provides them.
    """

    config: dict[str, Any]
    model_name: str = ""
    data: TrainingData | None = None

    @property
    def dataset(self) -> str:
        return self.config.get("dataset", {}).get("name", "")
