"""``dataset=ultrachat``: UltraChat 200k (``HuggingFaceH4/ultrachat_200k``, MIT), multi-turn chats
between two ChatGPT instances, one playing the user. Predict the last assistant turn from the turns
before it, given as chat history (see :mod:`experiments.data.chat`). Splits: ``test`` is
``test_sft`` (23,110 chats), ``train`` is ``train_sft``, ``val`` is ``test_gen`` (other hub split
names are passed through). Needs the hub; offline stand-in: ``dataset=sharegpt``.
``dataset.path=`` takes a local .json/.jsonl/.parquet file with the hub's columns
(``prompt``, ``prompt_id``, ``messages``: a list of ``{role, content}``).
"""

from __future__ import annotations

from . import Sample, register_dataset
from .chat import PROMPT, chat_sample
from .hub import check_columns, hub_rows

HUB_ID = "HuggingFaceH4/ultrachat_200k"
HUB_SPLITS = {"train": "train_sft", "val": "test_gen", "test": "test_sft"}
FILE_HINT = "ultrachat-format .json/.jsonl/.parquet (columns prompt_id, messages)"


@register_dataset("ultrachat", task="generate", prompt=PROMPT, description="UltraChat 200k -> last assistant turn")
def load_ultrachat(
    split: str = "test", max_prompt_chars: int | None = 4000, path: str | None = None, hub_id: str = HUB_ID
) -> list[Sample]:
    # streaming: only the chosen split is read (the dataset's other splits are over 1 GB)
    rows = hub_rows("ultrachat", hub_id, HUB_SPLITS.get(split, split), path, "sharegpt", FILE_HINT, streaming=True)
    samples = []
    for index, row in enumerate(rows):
        check_columns("ultrachat", row, ("messages",), FILE_HINT)
        turns = [(message.get("role", ""), message.get("content") or "") for message in row["messages"]]
        sample = chat_sample(str(row.get("prompt_id") or index), turns, max_prompt_chars)
        if sample is not None:
            samples.append(sample)
    return samples
