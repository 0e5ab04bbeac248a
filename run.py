"""Entry point: ``python run.py [task=generate|report] method=X dataset=Y key=value ...``.

Hydra composes ``conf/``; ``-m`` runs sweeps (``method=full,h2o method.m=64,128``). Mistakes in the
command line (an unknown method, dataset, model, key or parameter, a value of the wrong kind, a bad
budget, a missing or damaged model, an unwritable results folder) end with one line on stderr that
names the fix, and exit status 2, before any model loads; every value of a sweep is checked before
its first job. Ctrl-C (exit 130) and SIGTERM (exit 143) end with one line saying what finished.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

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
    """Reject unknown group choices, method parameters and keys before Hydra prints a wall of text."""
    composed, composition_error = compose_first_job(argv)
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
    for arg in argv:
        key = arg.partition("=")[0].lstrip("+~")
        if key.startswith("adore.") and "=" in arg:
            fail(f"ADORE's settings moved into its method config: use method.{key[len('adore.') :]}= instead of {key}=")
    method_params = [arg.partition("=")[0].lstrip("+~").split(".")[1] for arg in argv
                     if arg.lstrip("+~").startswith("method.") and "=" in arg]  # fmt: skip
    if method_params:
        from adore.methods import method_parameters

        default = [composed["method"]["name"]] if composed is not None else ["full"]
        for name in chosen.get("method", default):
            known = method_parameters(name)
            for param in method_params:
                if param not in known:
                    fail(f"method {name!r} has no parameter {param!r}; its parameters are: {', '.join(sorted(known))}")
    if composition_error:
        fail(composition_error)
    if composed is not None:
        check_sweep_values(argv, composed)


def _job_config(composed: DictConfig) -> dict[str, Any] | None:
    """The job's config as ``main`` sees it (Hydra's own section left out); ``None`` when it does not
    resolve here (an ``${oc.env:...}`` the job's environment may still provide)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"]),
                                      resolve=True)  # fmt: skip
    except OmegaConfBaseException:
        return None


def check_sweep_values(argv: list[str], composed: DictConfig) -> None:
    """The typed check of every job's config before the first job runs: a sweep with one bad value
    (``method.m=48,abc,40``) is refused whole, instead of stopping at that job after the others ran."""
    from adore import ConfigError
    from experiments.infra.checks import check_config

    variants = _sweep_variants(argv)
    sweep = "; no job of this sweep has run" if variants else ""
    config = _job_config(composed)
    try:
        if config is not None:
            check_config(config)
        for text, overrides in variants:
            job, error = compose_first_job(overrides)
            if error:
                fail(f"{text}: {error}; no job of this sweep has run")
            job_config = _job_config(job) if job is not None else None
            if job_config is not None:
                check_config(job_config)
    except ConfigError as error:
        fail(f"{error}{sweep}")


def _sweep_variants(argv: list[str]) -> list[tuple[str, list[str]]]:
    """For every swept value after the first: ``(key=value, the overrides of a job with it)``, the
    other sweeps at their first values (one job per value, not the whole grid)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep
    from hydra.errors import OverrideParseException

    overrides = _overrides(argv)
    if not overrides or not any(arg in ("-m", "--multirun") for arg in argv):
        return []
    firsts, sweeps = [], []
    for index, text in enumerate(overrides):
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except OverrideParseException:
            return []  # compose_first_job has named it already
        if override.is_sweep_override() and isinstance(override.value(), ChoiceSweep | RangeSweep):
            key = override.get_key_element()
            values = list(override.sweep_string_iterator())
            firsts.append(f"{key}={values[0]}")
            sweeps.extend((index, f"{key}={value}") for value in values[1:])
        else:
            firsts.append(text)
    return [(text, [*firsts[:index], text, *firsts[index + 1 :]]) for index, text in sweeps]


# Hydra's flags: those followed by a value, and those after which no overrides are checked here.
_FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p")
_FLAGS_UNCHECKED = ("-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc", "--shell-completion",
                    "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun")  # fmt: skip


def _overrides(argv: list[str]) -> list[str] | None:
    """The override arguments, or ``None`` when a flag makes Hydra do something else than compose."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.split("=", 1)[0] in _FLAGS_UNCHECKED:
            return None
        elif arg in ("-m", "--multirun") or arg.split("=", 1)[0] in _FLAGS_WITH_VALUE:
            skip = arg in _FLAGS_WITH_VALUE
        elif arg.startswith("-"):
            return None  # not a flag we know: Hydra's own usage message explains it
        else:
            overrides.append(arg)
    return overrides


def compose_first_job(argv: list[str]) -> tuple[DictConfig | None, str | None]:
    """Compose the config of a sweep's first job (each sweep at its first value) the way Hydra will,
    so that an unknown key, a missing config or a malformed override is one line, not a wall.
    Returns the config, or the error message."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException

    overrides = _overrides(argv)
    if overrides is None:
        return None, None
    first = []
    for text in overrides:
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except OverrideParseException as error:
            hint = "see `python run.py --help`"
            key, _, value = text.partition("=")
            if value and value[0] not in "[{'\"":
                # Hydra's grammar reads spaces, brackets, quotes and '=' in a bare value as syntax.
                shell = f"\"{key}='{value}'\"" if "'" not in value else f'"{key}=\\"{value}\\""'
                hint = f"quote the value inside the argument, e.g. {shell}"
            return None, f"cannot parse the override {text!r} ({str(error).splitlines()[0]}); {hint}"
        if override.is_sweep_override():
            if not isinstance(override.value(), ChoiceSweep | RangeSweep):
                continue  # glob() and interval(): Hydra expands or rejects them itself
            text = f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
        first.append(text)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="run"):
            return compose("config", overrides=first, return_hydra_config=True), None
    except MissingConfigException as error:
        group, _, name = (error.missing_cfg_file or "").rpartition("/")
        options = f"; choose one of: {', '.join(error.options)}" if error.options else ""
        where = f" (files in conf/{group}/)" if (CONF / group).is_dir() and group else ""
        return None, f"unknown {group or 'config'} {name!r}{options}{where}"
    except HydraException as error:
        from omegaconf.errors import ConfigAttributeError, ConfigKeyError

        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if isinstance(error.__cause__, ConfigAttributeError | ConfigKeyError) and lines[0].startswith(
            "Could not override"
        ):
            key = lines[0].split("'")[1]
            return None, f"unknown key {key!r}; `python run.py --cfg job` lists every key (a new key needs +{key}=...)"
        return None, " ".join(lines)


def dataset_task(config: dict) -> dict:
    """``task=generate`` (the default) on a dataset of another task (``gutenberg``: ``stream``) runs
    that dataset's task with the defaults of ``conf/task/<task>.yaml``."""
    if config["task"]["name"] != "generate":
        return config
    from experiments.data import dataset_spec

    task = dataset_spec(config["dataset"]["name"]).task
    if task == "generate":
        return config
    print(f"dataset={config['dataset']['name']} is a {task!r} dataset: running task={task}", file=sys.stderr)
    return {**config, "task": OmegaConf.to_container(OmegaConf.load(CONF / "task" / f"{task}.yaml"))}


# What the interrupt line names: the results folder of the job that runs now.
_NOW: dict[str, Any] = {}


def _sweep_job() -> int | None:
    """This job's number in a multirun (``None`` in a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None
    return hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")  # absolute: run.cli works imported too
def main(cfg: DictConfig) -> None:
    from adore import HarnessError

    config = OmegaConf.to_container(cfg, resolve=True)
    _NOW["results_dir"] = config.get("results_dir")
    try:
        from experiments.infra.checks import preflight
        from experiments.infra.runtime import with_model_name
        from experiments.infra.sweep import resume_check

        config = with_model_name(dataset_task(config))
        from experiments.infra.tasks import task_spec

        task = task_spec(config["task"]["name"])
        preflight(config, uses_model=task.uses_model)  # before any data or model loads
        config, skip = resume_check(config)  # the same dict Run.finish hashes
        if skip:
            print(skip)
            return
        result = task.run(config)
        line = task.summary(result) if task.summary else None
        if line:
            print(line)
    except HarnessError as error:
        job = _sweep_job()
        if job is None:
            fail(str(error))
        fail(
            f"{error} (sweep job {job} stopped the sweep: the jobs before it kept their rows, the later ones did "
            "not run; fix it and rerun the same command to resume)"
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that one path reports both (``KeyboardInterrupt`` is not an
    ``Exception``: neither Hydra nor the libraries underneath catch it on its way up)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def interrupted_line(signum: int) -> str:
    """The one line printed on Ctrl-C or SIGTERM: what finished, and that rerunning resumes."""
    from experiments.infra.results import WRITTEN

    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    if WRITTEN:
        files = ", ".join(sorted({str(path) for path in WRITTEN}))
        done = f"{len(WRITTEN)} row(s) of finished runs are in {files}"
    else:
        where = f" to {Path(str(_NOW['results_dir'])) / 'runs.jsonl'}" if _NOW.get("results_dir") else ""
        done = f"no run finished in this command, so no row was added{where}"
    return (
        f"interrupted by {name}: {done}; the run in progress wrote no row, and rows already written are intact; "
        "rerun the same command to resume (runs that have a row are skipped)"
    )


def cli(argv: list[str]) -> None:
    """What ``python run.py ARGS`` does: the command-line checks, then Hydra's ``main`` (which reads
    ``sys.argv``), with Ctrl-C and SIGTERM turned into one line and exit 130 or 143."""
    from adore import HarnessError

    try:
        try:
            check_command_line(argv)
        except HarnessError as error:
            fail(str(error))
        main()
    except KeyboardInterrupt as interrupt:
        signum = signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut this line short
            signal.signal(sig, signal.SIG_IGN)
        print(f"\n{interrupted_line(signum)}", file=sys.stderr)
        sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli(sys.argv[1:])
