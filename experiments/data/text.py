"""``dataset=text dataset.path=FILE``: stream any plain-text file (task ``stream``)."""

from __future__ import annotations

from adore import ConfigError

from . import Sample, given_file, register_dataset


@register_dataset("text", task="stream", description="any UTF-8 text file, streamed token by token")
def load_text(path: str | None = None) -> list[Sample]:
    if not path:
        raise ConfigError("dataset=text needs a file: set dataset.path=<file.txt>")
    file = given_file(path, "a UTF-8 text file")
    data = file.read_bytes()
    # A binary file decoded leniently would be streamed as replacement characters and scored as text.
    if b"\x00" in data:
        raise ConfigError(f"dataset.path {path!r} is a binary file (it has NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"dataset.path {path!r} is not UTF-8 text (byte {error.start} is not); convert it, e.g. "
            "`iconv -f latin1 -t utf-8`, or give a UTF-8 text file"
        ) from None
    if not text.strip():
        raise ConfigError(f"dataset.path {path!r} is empty; give a file with text in it")
    return [Sample(file.stem, {"text": text}, "")]
