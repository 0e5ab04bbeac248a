"""``dataset=everythinglm``: EverythingLM V3 (``totally-not-an-llm/EverythingLM-data-V3``, JSON),
instructions with long GPT-4 answers; one split (``train``), so ``train``/``val``/``test``
are 80/10/10% of it by row order. Input: the instruction; reference: the output. Needs the hub;
offline stand-in: ``dataset=sharegpt``. ``dataset.path=`` takes a local .json/.jsonl/.parquet/.csv
file with the hub's columns (``instruction``, ``output``); the whole file is then the split.
"""

from __future__ import annotations

from . import Sample, register_dataset
from .hub import check_columns, hub_rows

PROMPT = "{instruction}"
HUB_ID = "totally-not-an-llm/EverythingLM-data-V3"
SHARES = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
FILE_HINT = "everythinglm-format .json/.jsonl/.parquet (columns instruction, output)"


@register_dataset("everythinglm", task="generate", prompt=PROMPT, description="instruction -> long answer")
def load_everythinglm(split: str = "test", path: str | None = None, hub_id: str = HUB_ID) -> list[Sample]:
    rows = list(hub_rows("everythinglm", hub_id, "train", path, "sharegpt", FILE_HINT))
    if not path:
        low, high = SHARES.get(split, (0.0, 1.0))
        rows = rows[int(low * len(rows)) : int(high * len(rows))]
    samples = []
    for index, row in enumerate(rows):
        check_columns("everythinglm", row, ("instruction", "output"), FILE_HINT)
        instruction, output = (row["instruction"] or "").strip(), (row["output"] or "").strip()
        if instruction and output:
            samples.append(Sample(str(row.get("id") or index), {"instruction": instruction}, output))
    return samples
