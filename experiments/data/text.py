"""``dataset=text dataset.path=FILE``: stream any plain-text file (task ``stream``)."""

from __future__ import annotations

from pathlib import Path

from adore import ConfigError

from . import Sample, register_dataset


@register_dataset("text", task="stream", description="any UTF-8 text file, streamed token by token")
def load_text(path: str | None = None) -> list[Sample]:
    if not path:
        raise ConfigError("dataset=text needs a file: set dataset.path=<file.txt>")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"dataset.path {path!r} does not exist; give a UTF-8 text file")
    text = file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ConfigError(f"dataset.path {path!r} is empty; give a file with text in it")
    return [Sample(file.stem, {"text": text}, "")]
