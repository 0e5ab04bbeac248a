"""Sweeps: resume (skip before the model loads), force, the submitit launcher, the presets, and
one-line errors for bad overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.results import append_row, config_hash, make_row, read_rows
from experiments.runtime import Run, policy_from_config
from experiments.sweep import canonical_config, resume_check
from tests.conftest import ROOT, conf_choices

PRESETS = ("sweep_m", "sweep_R", "paper", "paper_stream", "paper_small", "stream_heldout", "ablation_sparsity",
           "ablation_rebuild", "ablation_controller", "sink_ablation", "paper_adapter", "paper_gsm8k", "paper_n8", "paper_stream_adore",
           "paper_stream_adore_long")  # fmt: skip
STREAM_PRESETS = ("paper_stream", "stream_heldout", "sink_ablation", "paper_stream_adore", "paper_stream_adore_long")


def composed(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=hydra)
    return cfg if hydra else OmegaConf.to_container(cfg, resolve=True)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)  # fmt: skip


def test_resume_check_skips_a_config_that_has_a_row_and_force_reruns(tmp_path):
    config = composed("method=h2o", "method.m=32", f"results_dir={tmp_path}")
    assert resume_check(config) == (config, None)

    # The row Run.finish writes for this very dict carries the hash the check looks for.
    loaded = SimpleNamespace(name="smollm2-135m", device="cpu", dtype="torch.float32")
    Run(config, task="generate").finish(policy_from_config(config["method"], config), loaded, n_samples=1)
    (row,) = read_rows(tmp_path)
    assert row["config_hash"] == config_hash(config)
    _, skip = resume_check(config)
    assert skip == (
        f"skip: h2o m=32 heavy_ratio=0.5 on aclsum already has a row (config_hash {row['config_hash']}); "
        "force=true reruns"
    )
    forced = composed("method=h2o", "method.m=32", f"results_dir={tmp_path}", "force=true")
    assert config_hash(forced) == config_hash(config) and resume_check(forced)[1] is None
    assert resume_check(composed("method=h2o", "method.m=64", f"results_dir={tmp_path}"))[1] is None
    elsewhere = composed("method=h2o", "method.m=32", f"results_dir={tmp_path / 'other'}")
    assert config_hash(elsewhere) == config_hash(config) and resume_check(elsewhere)[1] is None


def test_ignored_method_parameters_are_canonical_so_full_runs_once_in_a_budget_sweep(tmp_path):
    full = composed("method=full", f"results_dir={tmp_path}")
    swept = [canonical_config(composed("method=full", f"method.m={m}", f"results_dir={tmp_path}")) for m in (32, 64)]
    assert all(c["method"] == {"name": "full", "m": None} for c in swept)
    assert {config_hash(c) for c in swept} == {config_hash(full)}
    topk = canonical_config(composed("method=topk", "method.m=64"))
    assert topk["method"]["m"] is None and topk["method"]["K"] == 64
    h2o = composed("method=h2o", "method.m=64")
    assert canonical_config(h2o) is h2o  # nothing ignored: the same dict, the same hash as before
    kv = composed("method=kv_compression")
    assert canonical_config(kv)["method"]["recent"] is None  # a derived default stays as configured


def test_parity_is_skipped_only_when_both_of_its_rows_exist(tmp_path):
    config = composed("task=parity", f"results_dir={tmp_path}")
    for side in ("hf_generate", "full"):
        assert resume_check(config)[1] is None
        side_config = {**config, "method": {"name": side}}  # what run_parity gives Run for each row
        append_row(tmp_path, make_row(task="parity", method=side, config_hash=config_hash(side_config)))
    assert resume_check(config)[1].startswith(
        "skip: parity (engine full against hf_generate) on aclsum already has its"
    )


@pytest.mark.model
def test_submitit_sweep_then_resume_launches_only_missing_runs_and_force_reruns(tmp_path):
    tiny = ("dataset.limit=1", "max_new_tokens=4", f"results_dir={tmp_path}")
    # submitit_local: the same code path as SLURM, two jobs in their own processes, one runs.jsonl.
    result = run_cli("-m", "hydra/launcher=submitit_local", "method=full,window", "method.m=16", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(tmp_path)
    assert sorted(r["method"] for r in rows) == ["full", "window"]
    assert all(r["n_samples"] == 1 for r in rows)

    # A wider sweep: full (m ignored) and window m=16 are done; only window m=32 runs.
    result = run_cli("-m", "method=full,window", "method.m=16,32", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    skips = [line for line in result.stdout.splitlines() if line.startswith("skip: ")]
    assert len(skips) == 3 and skips[0].startswith("skip: full on aclsum already has a row (config_hash ")
    assert skips[2].startswith("skip: window m=16 on aclsum") and skips[2].endswith("; force=true reruns")
    assert [(r["method"], r["m"]) for r in read_rows(tmp_path)][2:] == [("window", 32)]

    # Again: every run is skipped before its model loads (no progress bar, no row, no run folder).
    folders = sorted((tmp_path / "runs").iterdir())
    result = run_cli("-m", "method=full,window", "method.m=16,32", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(line.startswith("skip: ") for line in result.stdout.splitlines()) == 4
    assert "sample/s" not in result.stderr and "on aclsum:" not in result.stderr
    assert len(read_rows(tmp_path)) == 3 and sorted((tmp_path / "runs").iterdir()) == folders

    result = run_cli("method=window", "method.m=32", "force=true", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(tmp_path)
    assert len(rows) == 4 and rows[3]["config_hash"] == rows[2]["config_hash"]
    assert json.loads((Path(rows[3]["run_dir"]) / "config.json").read_text())["force"] is True


def test_a_launcher_override_passes_the_checks(tmp_path):
    result = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "task=report", f"results_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no rows in" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["foo=1"], "error: unknown key 'foo'; `python run.py --cfg job` lists every key"),
        (["dataset.foo=1"], "error: unknown key 'dataset.foo'"),
        (
            ["+experiment=nope"],
            f"error: unknown experiment 'nope'; choose one of: {conf_choices('experiment')} (files in conf/experiment/)",
        ),
        (["hydra/launcher=nope"], "error: unknown hydra/launcher 'nope'; choose one of: basic, joblib, submitit_local"),
        (["hydra.launcher.n_jobs=2"], "error: unknown key 'hydra.launcher.n_jobs'"),
        (["-m", "method=window,nope"], "error: unknown method 'nope'"),
        (["foo=[1"], "error: cannot parse the override 'foo=[1'"),
        (["task=report", "force=maybe"], "error: force must be true or false, got 'maybe'"),
    ],
)
def test_bad_override_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli(*args, f"results_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_sweep_known_methods_and_datasets_of_the_right_task(preset):
    from experiments.data import dataset_spec

    cfg = composed(f"+experiment={preset}", hydra=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params, "a preset is a sweep: hydra.sweeper.params"
    methods = str(params.get("method", cfg.method.name)).split(",")
    assert set(methods) <= {p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")}
    datasets = str(params.get("dataset", cfg.dataset.name)).split(",")
    assert set(datasets) <= {p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml")}
    tasks = {dataset_spec(name).task for name in datasets}
    assert tasks == ({"generate"} if preset not in STREAM_PRESETS else tasks - {"generate"})
    budgets = [int(m) for m in str(params.get("method.m", cfg.method.get("m"))).split(",") if m != "None"]
    assert all(m > 0 for m in budgets)
    if "adore" in methods and preset not in ("sweep_R", "ablation_rebuild"):
        assert cfg.method.name != "adore" or (cfg.method.K or min(32, min(budgets) // 2)) <= min(budgets)
