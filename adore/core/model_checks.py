"""Cheap checks of a Hugging Face model folder, before it is loaded.

``from_pretrained`` on a damaged folder fails with a long traceback, or (a truncated safetensors
file) after seconds of loading; these checks read only small files and headers and name the fix in
one line: a missing or malformed ``config.json``, no tokenizer, no weights, a truncated weight file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def _fix(path: str) -> str:
    if "smollm2" in path:
        return "run `make setup` to convert the embedded model again"
    return "point model.path= at a complete Hugging Face model folder"


def safetensors_problem(file: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be complete (``None`` when its header and size agree)."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is {size} bytes, too short for a safetensors header"
        (header_size,) = struct.unpack("<Q", head)
        if header_size > size - 8:
            return "is truncated (its header runs past the end of the file)"
        try:
            header = json.loads(handle.read(header_size))
        except (ValueError, UnicodeDecodeError):
            return "has a corrupt header"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]  # fmt: skip
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return None


def check_model_folder(path: str | None) -> None:
    """Refuse, in one line, a model folder that cannot load; a complete one passes in milliseconds."""
    if not path:
        raise ConfigError("model.path is empty; set model.path=<HF model folder>")
    folder = Path(path)
    fix = _fix(str(path))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model path {str(path)!r} has no config.json; {fix}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        where = f" (line {error.lineno}: {error.msg})" if isinstance(error, json.JSONDecodeError) else ""
        raise ConfigError(f"model path {str(path)!r}: config.json is not valid JSON{where}; {fix}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(f"model path {str(path)!r}: config.json has no model_type; {fix}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"model path {str(path)!r} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); "
            f"copy the model's tokenizer files into it, or {fix}"
        )
    weights = sorted({file for pattern in WEIGHT_PATTERNS for file in folder.glob(pattern)})
    if not weights:
        raise ConfigError(f"model path {str(path)!r} has no weights (*.safetensors or pytorch_model.bin); {fix}")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (ValueError, AttributeError):
            raise ConfigError(f"model path {str(path)!r}: {index.name} is not valid JSON; {fix}") from None
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            raise ConfigError(f"model path {str(path)!r} lacks the weight shard {missing[0]}; {fix}")
    for file in weights:
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
            if problem:
                raise ConfigError(f"model path {str(path)!r}: {file.name} {problem}; {fix}")
        elif file.stat().st_size == 0:
            raise ConfigError(f"model path {str(path)!r}: {file.name} is empty; {fix}")
