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

from . import Sample, given_file, register_dataset

PROMPT = (
    "Summarize the following research paper in three sentences: the problem it addresses, "
    "the approach it proposes, and the outcome.\n\nTitle: {title}\n\n{text}"
)
ASPECTS = ("challenge", "approach", "outcome")
SECTIONS = ("abstract", "introduction", "conclusion")
FILE_HINT = "an ACLSum-format .jsonl file (one JSON object per line with id, title, sentences, summary)"
SPLITS = ("train", "val", "test")


def detokenize(text: str) -> str:
    """Undo the corpus' tokenisation (``"word , word ( x )"`` -> ``"word, word (x)"``)."""
    text = re.sub(r" ([,.;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d)\b", r"\1", text)


def _data_file(split: str, path: str | None) -> Path:
    if path:
        return given_file(path, FILE_HINT)
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
    unknown = [section for section in sections if section not in SECTIONS]
    if isinstance(sections, str) or unknown:
        raise ConfigError(f"dataset.sections must be a list of {', '.join(SECTIONS)}, got {sections!r}")
    file = _data_file(split, path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{file} is not UTF-8 text (byte {error.start} is not); give {FILE_HINT}") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        samples.append(_sample(line, f"{file} line {number}", sections))
    return samples


def _sample(line: str, where: str, sections: tuple[str, ...]) -> Sample:
    """One line of an ACLSum file; what is wrong with it is named with its line number."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        looks = " (the file looks like CSV)" if "," in line and not line.lstrip().startswith("{") else ""
        raise ConfigError(f"{where} is not valid JSON ({error.msg}){looks}; give {FILE_HINT}") from None
    try:
        text = " ".join(str(sentence) for section in sections for sentence in row["sentences"][section])
        reference = " ".join(str(row["summary"][aspect]).strip() for aspect in ASPECTS)
        return Sample(str(row["id"]), {"title": str(row["title"]), "text": detokenize(text)}, reference)
    except (KeyError, TypeError) as error:
        missing = f"lacks {error.args[0]!r}" if isinstance(error, KeyError) else "is not an ACLSum record"
        raise ConfigError(f"{where} {missing}; give {FILE_HINT}") from None
