"""ACLSum (Takeshita et al., NAACL 2024): ACL papers with aspect summaries, shipped in ``aclsum``.

The offline stand-in for summarisation (CNN/DailyMail, SAMSum). Input: the paper's title and the
sentences of the chosen sections (default: the abstract). Reference: the three abstractive aspect
summaries (challenge, approach, outcome) joined in that order. License: MIT (package).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from adore import ConfigError

from . import Sample, register_dataset

PROMPT = (
    "Summarize the following research paper in three sentences: the problem it addresses, "
    "the approach it proposes, and the outcome.\n\nTitle: {title}\n\n{text}"
)
ASPECTS = ("challenge", "approach", "outcome")
SPLITS = ("train", "val", "test")


def detokenize(text: str) -> str:
    """Undo the corpus' tokenisation (``"word , word ( x )"`` -> ``"word, word (x)"``)."""
    text = re.sub(r" ([,.;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d)\b", r"\1", text)


def _data_file(split: str, path: str | None) -> Path:
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"dataset.path {path!r} does not exist; give an ACLSum-format .jsonl file")
        return file
    try:
        return Path(str(resources.files("aclsum") / "dataset" / f"{split}.jsonl"))
    except ModuleNotFoundError:
        raise ConfigError("package aclsum is not installed; run `make setup`") from None


@register_dataset("aclsum", task="generate", prompt=PROMPT, description="ACL papers -> 3-aspect summary")
def load_aclsum(
    split: str = "test", sections: tuple[str, ...] = ("abstract",), path: str | None = None
) -> list[Sample]:
    if split not in SPLITS:
        raise ConfigError(f"dataset.split must be one of {', '.join(SPLITS)}, got {split!r}")
    samples = []
    for line in _data_file(split, path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        text = " ".join(sentence for section in sections for sentence in row["sentences"][section])
        reference = " ".join(row["summary"][aspect].strip() for aspect in ASPECTS)
        samples.append(Sample(row["id"], {"title": row["title"], "text": detokenize(text)}, reference))
    return samples
