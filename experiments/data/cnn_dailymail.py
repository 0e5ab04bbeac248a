"""``dataset=cnn_dailymail``: CNN/DailyMail (``abisee/cnn_dailymail``, config ``3.0.0``, Parquet;
Apache-2.0): news articles with their bullet-point highlights; test split 11,490 articles. Input:
the article, cut to its first ``max_prompt_chars`` characters at a word boundary; reference: the
highlights. Needs the hub; offline stand-in: ``dataset=aclsum``. ``dataset.path=`` takes a local
.json/.jsonl/.parquet/.csv file with the hub's columns (``id``, ``article``, ``highlights``).
"""

from __future__ import annotations

from adore import ConfigError

from . import Sample, register_dataset
from .hub import check_columns, hub_rows

PROMPT = "Summarize the following news article in a few sentences.\n\n{article}"
HUB_ID = "abisee/cnn_dailymail"
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
FILE_HINT = "cnn_dailymail-format .json/.jsonl/.parquet (columns id, article, highlights)"


def truncate(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, cut back to the last whole word."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


@register_dataset("cnn_dailymail", task="generate", prompt=PROMPT, description="news article -> highlights")
def load_cnn_dailymail(
    split: str = "test",
    path: str | None = None,
    hub_id: str = HUB_ID,
    hub_config: str = "3.0.0",
    max_prompt_chars: int = 4000,
) -> list[Sample]:
    if not isinstance(max_prompt_chars, int) or max_prompt_chars <= 0:
        raise ConfigError(f"dataset.max_prompt_chars must be a positive integer, got {max_prompt_chars!r}")
    rows = hub_rows("cnn_dailymail", hub_id, HUB_SPLITS.get(split, split), path, "aclsum", FILE_HINT, config=hub_config)
    samples = []
    for index, row in enumerate(rows):
        check_columns("cnn_dailymail", row, ("article", "highlights"), FILE_HINT)
        article = " ".join((row["article"] or "").split())
        highlights = (row["highlights"] or "").strip()
        if article and highlights:
            samples.append(
                Sample(str(row.get("id") or index), {"article": truncate(article, max_prompt_chars)}, highlights)
            )
    return samples
