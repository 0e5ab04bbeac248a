"""ADORE's controller, label, training and fine-tuning settings, at the defaults of
``conf/method/adore.yaml``. Until this release they were a top-level ``adore:`` config section; the
row hash puts them back there (``ADORE.moved_settings``), so rows written before stay resumable."""

from __future__ import annotations

from typing import Any

SETTINGS_DEFAULTS: dict[str, Any] = {
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
