"""``dataset=pg19``: PG19 (Rae et al. 2020; ``emozilla/pg19``, the parquet copy of ``deepmind/pg19``;
Apache-2.0), books from Project Gutenberg published before 1919; the test split holds 100 books.
Streamed token by token (``task=stream``), as in StreamingLLM. The hub is read with
``streaming=True``, so only the chosen book is fetched, not the 11 GB corpus. ``dataset.book`` is
the book's index in the split. Needs the hub; offline stand-in: ``dataset=gutenberg``.
``dataset.path=`` takes a local .json/.jsonl/.parquet file with the hub's columns
(``short_book_title``, ``text``).
"""

from __future__ import annotations

from itertools import islice

from adore import ConfigError

from . import Sample, register_dataset
from .hub import check_columns, hub_rows

HUB_ID = "emozilla/pg19"
FILE_HINT = "pg19-format .json/.jsonl/.parquet (columns short_book_title, text)"


@register_dataset("pg19", task="stream", description="PG19 books, streamed token by token")
def load_pg19(split: str = "test", book: int = 0, path: str | None = None, hub_id: str = HUB_ID) -> list[Sample]:
    if book < 0:
        raise ConfigError(f"dataset.book must be a non-negative index, got {book}")
    rows = hub_rows("pg19", hub_id, split, path, "gutenberg", FILE_HINT, streaming=True)
    row = next(islice(iter(rows), book, None), None)
    if row is None:
        raise ConfigError(f"pg19 {split} has no book {book}; choose a smaller dataset.book")
    check_columns("pg19", row, ("text",), FILE_HINT)
    if not (row["text"] or "").strip():
        raise ConfigError(f"pg19 book {book} has no text")
    return [Sample(str(row.get("short_book_title") or f"pg19-{book}"), {"text": row["text"]}, "")]
