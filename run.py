"""Entry point: ``python run.py [task=generate|report] method=X dataset=Y key=value ...``.

Hydra composes ``conf/``; ``-m`` runs sweeps (``method=full,h2o method.m=64,128``). Mistakes in the
command line (an unknown method, dataset, model or parameter, a bad budget, a missing model) end with
one line on stderr that names the fix, and exit status 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch is imported: torch's busy-waiting OpenMP threads collapse throughput when anything
# else shares the CPU; no network for the hub (everything here runs offline).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hydra
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parent / "conf"
GROUPS = ("method", "dataset", "model", "task")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def check_command_line(argv: list[str]) -> None:
    """Reject unknown group choices and method parameters before Hydra prints a wall of text."""
    chosen: dict[str, list[str]] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep:
            continue
        if key in GROUPS and not value.startswith("glob("):
            for name in value.split(","):
                if name not in _choices(key):
                    fail(f"unknown {key} {name!r}; choose one of: {', '.join(_choices(key))} (files in conf/{key}/)")
            chosen[key] = value.split(",")
    method_params = [arg.partition("=")[0].lstrip("+~").split(".", 1)[1] for arg in argv
                     if arg.lstrip("+~").startswith("method.") and "=" in arg]  # fmt: skip
    if method_params:
        from dataclasses import fields

        from adore.registry import method_class

        for name in chosen.get("method", ["full"]):
            known = {f.name for f in fields(method_class(name))}
            for param in method_params:
                if param not in known:
                    fail(f"method {name!r} has no parameter {param!r}; its parameters are: {', '.join(sorted(known))}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from adore.errors import HarnessError

    config = OmegaConf.to_container(cfg, resolve=True)
    task = config["task"]["name"]
    try:
        if task == "generate":
            from experiments.generation import run_generation
            from experiments.report import markdown_table

            row = run_generation(config)
            print(markdown_table([row]))
        elif task == "stream":
            from experiments.streaming import run_stream

            row = run_stream(config)
            print(
                f"perplexity {row['perplexity']} over the stream; per-window curve in {row['run_dir']}/perplexity.png"
            )
        elif task == "train":
            from experiments.adore_training import run_train

            run_train(config)
        elif task == "parity":
            from experiments.parity import run_parity

            run_parity(config)
        elif task == "report":
            from experiments.report import run_report

            run_report(config)
        else:
            fail(f"unknown task {task!r}; choose one of: {', '.join(_choices('task'))}")
    except HarnessError as error:
        fail(str(error))


if __name__ == "__main__":
    from adore.errors import HarnessError

    try:
        check_command_line(sys.argv[1:])
    except HarnessError as error:
        fail(str(error))
    main()
