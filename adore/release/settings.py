"""ADORE's controller, label, training and fine-tuning settings, at the defaults of
``conf/method/adore.yaml``. Until one release they were a top-level ``adore:`` config section; the
row hash puts them back there (``ADORE.moved_settings``), so rows written before stay resumable."""

from __future__ import annotations

import copy
from typing import Any

# The settings as they were when they moved: frozen, because every other method's rows hash this
# section at these values. Settings added since are hash-neutral at their old behaviour
# (experiments.infra.results.HASH_NEUTRAL_DEFAULTS).
HASHED_DEFAULTS: dict[str, Any] = {
    "artifacts_dir": "artifacts",
    "train_dataset": None,
    "train_if_missing": True,
    "slicing": "gather",
    "finetune": False,
    "controller": {"width": 128, "scorer": "query_aware", "max_positions": 8192, "distance_buckets": 32},
    "labels": {"aggregate": "mean", "horizon": 8},
    "train": {"samples": 64, "eval_samples": 16, "max_length": 512, "epochs": 8, "lr": 0.003},
    "lora": {"r": 8, "alpha": 16, "lr": 0.0002, "epochs": 1},
}

# Today's defaults (equal to conf/method/adore.yaml, tested): relative positions and training
# sequences of up to 2048 tokens, so that a controller serves streams longer than its training
# sequences (README, "ADORE's defaults").
SETTINGS_DEFAULTS: dict[str, Any] = copy.deepcopy(HASHED_DEFAULTS)
SETTINGS_DEFAULTS["controller"].update(positions="relative", cell="gru")
SETTINGS_DEFAULTS["train"].update(max_length=2048)
SETTINGS_DEFAULTS["labels"].update(target="current")
