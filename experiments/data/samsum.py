"""``dataset=samsum``: SAMSum (CC BY-NC-ND 4.0), about 16k messenger-style dialogues with
one-or-two-sentence human summaries; test split 819 dialogues. Read from ``knkarthick/samsum``, a
Parquet copy with the original's columns: ``Samsung/samsum`` is gone from the hub and was a
loading-script dataset, which ``datasets`` >= 4 cannot load. Input: the dialogue;
reference: the summary. Needs the hub; offline stand-in: ``dataset=aclsum``. ``dataset.path=``
takes a local .json/.jsonl/.parquet/.csv file with the hub's columns (``id``, ``dialogue``,
``summary``).
"""

from __future__ import annotations

from . import Sample, register_dataset
from .hub import check_columns, hub_rows

PROMPT = "Summarize the following dialogue in one or two sentences.\n\n{dialogue}"
HUB_ID = "knkarthick/samsum"
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
FILE_HINT = "samsum-format .json/.jsonl/.parquet (columns id, dialogue, summary)"


@register_dataset("samsum", task="generate", prompt=PROMPT, description="messenger dialogue -> summary")
def load_samsum(split: str = "test", path: str | None = None, hub_id: str = HUB_ID) -> list[Sample]:
    rows = hub_rows("samsum", hub_id, HUB_SPLITS.get(split, split), path, "aclsum", FILE_HINT)
    samples = []
    for index, row in enumerate(rows):
        check_columns("samsum", row, ("dialogue", "summary"), FILE_HINT)
        dialogue = (row["dialogue"] or "").replace("\r\n", "\n").strip()
        if dialogue and (row["summary"] or "").strip():
            samples.append(Sample(str(row.get("id") or index), {"dialogue": dialogue}, row["summary"].strip()))
    return samples
