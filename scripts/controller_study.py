"""What the scripts that study a trained ADORE controller on a Gutenberg text share: their common
arguments, and the model, the controller and the text's first tokens they load."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The scripts that import this one run as `python scripts/<name>.py`: the repository root goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adore import LoadedModel, load_model
from adore.controller import ImportanceController
from adore.release.artifacts import load_controller
from experiments.data import load_samples


def study_arguments(description: str, book: str, tokens: int, several: bool = False) -> argparse.ArgumentParser:
    """``--controller`` (required; one or more folders where ``several``), ``--model``, ``--book``,
    ``--tokens``, ``--m`` and ``--K``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--controller", required=True, type=Path, nargs="+" if several else None,
                        help="ADORE artifact folder(s) holding controller.pt")  # fmt: skip
    parser.add_argument("--model", default="models/smollm2-135m")
    parser.add_argument("--book", default=book, help="a Gutenberg work the controller did not train on")
    parser.add_argument("--tokens", type=int, default=tokens)
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--K", type=int, default=32)
    return parser


def load_study(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[LoadedModel, list[ImportanceController], list[int]]:
    """The model, the controllers (in ``--controller``'s order) and the first ``--tokens`` ids of
    ``--book``; a missing controller is one line (the parser's error, exit 2)."""
    folders = args.controller if isinstance(args.controller, list) else [args.controller]
    for folder in folders:
        if not (folder / "controller.pt").is_file():
            parser.error(f"no controller.pt in {folder}; train one with `python run.py task=train method=adore`")
    loaded = load_model(args.model)
    (sample,) = load_samples("gutenberg", 1, book=args.book)
    ids = loaded.tokenizer(sample.fields["text"])["input_ids"][: args.tokens]
    return loaded, [load_controller(folder) for folder in folders], ids
