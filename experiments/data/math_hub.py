"""``dataset=math``: GSM8K test (``openai/gsm8k``, config ``main``; MIT), 1,319 grade-school math
problems; the reference is the worked solution (calculator annotations removed), the answer its
``#### N``. Same prompt and scoring as ``dataset=gsm8k`` (exact match of the final number, plus
BLEU/ROUGE/BERTScore). Splits: ``test``; ``train`` and ``val`` are the first 90% and the last 10% of
the hub's train split. Needs the hub; offline stand-in: ``dataset=gsm8k`` (100 of these problems).
``dataset.path=`` takes a local .json/.jsonl/.parquet file with the hub's columns
(``question``, ``answer``).
"""

from __future__ import annotations

from . import Sample, register_dataset
from .gsm8k import PROMPT, math_sample
from .hub import check_columns, hub_rows

HUB_ID = "openai/gsm8k"
HUB_SPLITS = {"train": "train[:90%]", "val": "train[90%:]", "test": "test"}
FILE_HINT = "gsm8k-format .json/.jsonl/.parquet (columns question, answer)"


@register_dataset("math", task="generate", prompt=PROMPT, description="GSM8K test (hub) -> worked solution")
def load_math(
    split: str = "test", path: str | None = None, hub_id: str = HUB_ID, hub_config: str = "main"
) -> list[Sample]:
    rows = hub_rows("math", hub_id, HUB_SPLITS.get(split, split), path, "gsm8k", FILE_HINT, config=hub_config)
    samples = []
    for index, row in enumerate(rows):
        check_columns("math", row, ("question", "answer"), FILE_HINT)
        samples.append(math_sample(f"gsm8k-{split}-{index}", row["question"], row["answer"]))
    return samples
