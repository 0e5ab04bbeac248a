"""Bad input, table-driven: every case ends with its one stderr line and exit code, no traceback, and
``runs.jsonl`` byte-identical afterwards (issue 15, and the cases of earlier issues).

The cases run in-process through ``run.cli`` (the very function ``python run.py`` calls, Hydra's
``main`` included) so that none costs a fresh interpreter; every one of them is refused before the
model loads. Signals need a real process and a running job: those two cases use subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import run
from adore import ConfigError, HarnessError
from experiments.infra.results import append_row, make_row, read_rows
from tests.conftest import METHOD_FILES, ROOT, SMOLLM2, conf_choices

ROOT_USER = os.geteuid() == 0  # permissions do not stop root: those cases are checked by patching below

SEED_ROWS = (
    make_row(run_id="seed-1", task="generate", method="h2o", m=32, dataset="aclsum", rougeL=10.0),
    make_row(run_id="seed-2", task="generate", method="full", dataset="aclsum", rougeL=20.0),
)


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]  # {tmp}: the case's own folder; {results}: the seeded results folder
    code: int
    line: str  # the one stderr line starts with this (after "error: " for exit 2)
    setup: str | None = None  # a function of this module that prepares {tmp}
    results_arg: bool = True  # append results_dir={results}


CASES = [
    # ---- issue 15: tracebacks for bad types, now one line before the model loads
    Case("m-bool", ("method=window", "method.m=true"), 2, "method.m must be an integer, got true; e.g. method.m=128"),
    Case("seed-text", ("seed=x",), 2, "seed must be an integer, got 'x'"),
    Case("max-new-tokens-text", ("max_new_tokens=abc",), 2, "max_new_tokens must be an integer, got 'abc'"),
    Case("max-new-tokens-float", ("max_new_tokens=1.5",), 2, "max_new_tokens must be an integer, got 1.5"),
    Case("batch-size-float", ("batch_size=1.5",), 2, "batch_size must be an integer or 'auto', got 1.5"),
    Case("batch-size-word", ("batch_size=most",), 2, "batch_size must be an integer or 'auto', got 'most'"),
    Case("limit-text", ("dataset.limit=abc",), 2, "dataset.limit must be an integer or null, got 'abc'"),
    Case("heavy-ratio-text", ("method=h2o", "method.heavy_ratio=abc"), 2, "method.heavy_ratio must be a number"),
    Case("history-window-float", ("method=kv_compression", "method.history_window=2.5"), 2,
         "method.history_window must be an integer, got 2.5"),
    Case("misspelt-dataset-key", ("+dataset.limt=1",), 2, "unknown key 'dataset.limt'; did you mean dataset.limit?"),
    Case("model-truncated-weights", ("model.path={tmp}/model",), 2, "model path '{tmp}/model': model.safetensors is truncated",
         setup="truncated_weights"),
    Case("model-no-tokenizer", ("model.path={tmp}/model",), 2, "model path '{tmp}/model' has no tokenizer",
         setup="no_tokenizer"),
    Case("model-bad-config", ("model.path={tmp}/model",), 2, "model path '{tmp}/model': config.json is not valid JSON (line 1",
         setup="malformed_config"),
    Case("model-no-weights", ("model.path={tmp}/model",), 2, "model path '{tmp}/model' has no weights", setup="no_weights"),
    Case("aclsum-binary", ("dataset.path={tmp}/papers.jsonl",), 2, "{tmp}/papers.jsonl is not UTF-8 text (byte 0",
         setup="binary_aclsum"),
    Case("aclsum-corrupt-line", ("dataset.path={tmp}/papers.jsonl",), 2, "{tmp}/papers.jsonl line 2 is not valid JSON",
         setup="corrupt_aclsum"),
    Case("aclsum-no-columns", ("dataset.path={tmp}/papers.jsonl",), 2, "{tmp}/papers.jsonl line 1 lacks 'sentences'",
         setup="columnless_aclsum"),
    Case("aclsum-csv", ("dataset.path={tmp}/papers.csv",), 2,
         "{tmp}/papers.csv line 1 is not valid JSON (Expecting value) (the file looks like CSV)", setup="csv_aclsum"),
    Case("results-under-file", ("results_dir={tmp}/file/results",), 2,
         "results_dir '{tmp}/file/results' is not writable: Not a directory", setup="a_file", results_arg=False),
    Case("results-under-proc", ("results_dir=/proc/adore-results",), 2,
         "results_dir '/proc/adore-results' is not writable", results_arg=False),
    Case("results-is-file", ("results_dir={tmp}/file",), 2, "results_dir '{tmp}/file' is a file, not a folder",
         setup="a_file", results_arg=False),
    Case("results-name-too-long", ("results_dir={tmp}/" + "r" * 300,), 2, "results_dir '{tmp}/" + "r" * 300 + "' is not writable: File name too long",
         results_arg=False),
    Case("controller-truncated", ("method=adore", "method.train_if_missing=false", "method.artifacts_dir={tmp}/art",
                                  "dataset.limit=1"), 2, "the ADORE controller {tmp}/art/adore/smollm2-135m/aclsum/K32-",
         setup="truncated_controller"),
    Case("bertscore-layers", ("bertscore.num_layers=99",), 2,
         "bertscore.num_layers must be in [1, 6] for model, got 99; e.g. bertscore.num_layers=6"),
    Case("stream-window-0", ("task=stream", "dataset=gutenberg", "task.window=0"), 2, "task.window must be positive, got 0"),
    # ---- issue 15: accepted in silence before
    Case("misspelt-top-key", ("+max_new_token=8",), 2, "unknown key 'max_new_token'; did you mean max_new_tokens?"),
    Case("unknown-top-key", ("+unknown=1",), 2, "unknown key 'unknown' (a `+` adds a key only the code reads"),
    Case("max-tokens-0", ("task=stream", "dataset=text", "dataset.path={tmp}/book.txt", "dataset.max_tokens=0"), 2,
         "dataset.max_tokens must be positive or null, got 0", setup="a_book"),
    Case("max-tokens-negative", ("task=stream", "dataset=text", "dataset.path={tmp}/book.txt", "dataset.max_tokens=-5"),
         2, "dataset.max_tokens must be positive or null, got -5", setup="a_book"),
    Case("binary-text", ("task=stream", "dataset=text", "dataset.path={tmp}/book.txt"), 2,
         "dataset.path '{tmp}/book.txt' is a binary file (it has NUL bytes)", setup="binary_book"),
    Case("results-empty", ("results_dir=",), 2, "results_dir is empty; set results_dir=<folder>", results_arg=False),
    Case("n-sink-float", ("method=streaming_llm", "method.n_sink=1.5"), 2, "method.n_sink must be an integer, got 1.5"),
    Case("m-expression", ("method=window", "method.m=10**12"), 2, "method.m must be an integer, got '10**12'"),
    Case("report-missing-folder", ("task=report", "results_dir={tmp}/nowhere"), 2,
         "results_dir '{tmp}/nowhere' does not exist; give the folder that holds runs.jsonl", results_arg=False),
    Case("report-bad-rows", ("task=report",), 0, "warning: {results}/runs.jsonl line 3 has m=\"sixteen\", not a number",
         setup="bad_rows"),
    # ---- issue 15: unclear before
    Case("train-command-keeps-settings", ("method=adore", "method.train_if_missing=false",
                                          "method.artifacts_dir={tmp}/my art", "method.controller.width=64"), 2,
         "no ADORE controller at {tmp}/my art/adore/smollm2-135m/aclsum/K32-"),
    Case("sweep-bad-value", ("-m", "method=window", "method.m=48,abc,40"), 2,
         "method.m must be an integer, got 'abc'; e.g. method.m=128; no job of this sweep has run"),
    Case("path-is-folder", ("dataset.path={tmp}",), 2, "dataset.path '{tmp}' is a folder, not a file"),
    Case("path-needs-quotes", ("task=stream", "dataset=text", "dataset.path={tmp}/my book (1).txt"), 2,
         "cannot parse the override 'dataset.path={tmp}/my book (1).txt'"),
    # ---- earlier issues (tests/test_cli.py, tests/test_sweeps.py)
    Case("unknown-method", ("method=nope",), 2, f"unknown method 'nope'; choose one of: {METHOD_FILES} (files in conf/method/)"),
    Case("unknown-dataset", ("dataset=nope",), 2, "unknown dataset 'nope'; choose one of: aclsum"),
    Case("m-zero", ("method=h2o", "method.m=0"), 2, "method.m must be a positive integer, got 0"),
    Case("m-negative", ("method=window", "method.m=-5"), 2, "method.m must be a positive integer, got -5"),
    Case("m-not-above-sinks", ("method=streaming_llm", "method.m=4"), 2, "method.m=4 must be larger than the 4 sink tokens"),
    Case("k-zero", ("method=topk", "method.K=0"), 2, "method.K must be a positive integer"),
    Case("unknown-parameter", ("method=window", "method.R=3"), 2, "method 'window' has no parameter 'R'"),
    Case("model-missing", ("model.path=/no/such/model",), 2, "model path '/no/such/model' has no config.json"),
    Case("max-new-tokens-0", ("max_new_tokens=0",), 2, "max_new_tokens must be positive"),
    Case("throughput-context-0", ("task=throughput", "task.context_lengths=[0]"), 2,
         "task.context_lengths must be a list of positive"),
    Case("throughput-unknown-method", ("task=throughput", "task.methods=[full,nope]"), 2,
         "unknown method 'nope' in task.methods"),
    Case("unknown-key", ("foo=1",), 2, "unknown key 'foo'; `python run.py --cfg job` lists every key"),
    Case("unknown-dataset-key", ("dataset.foo=1",), 2, "unknown key 'dataset.foo'"),
    Case("unknown-experiment", ("+experiment=nope",), 2, f"unknown experiment 'nope'; choose one of: {conf_choices('experiment')} (files in conf/experiment/)"),
    Case("unknown-launcher", ("hydra/launcher=nope",), 2, "unknown hydra/launcher 'nope'; choose one of: basic, joblib"),
    Case("unknown-hydra-key", ("hydra.launcher.n_jobs=2",), 2, "unknown key 'hydra.launcher.n_jobs'"),
    Case("sweep-unknown-method", ("-m", "method=window,nope"), 2, "unknown method 'nope'"),
    Case("unparsable", ("foo=[1",), 2, "cannot parse the override 'foo=[1'"),
    Case("force-not-bool", ("task=report", "force=maybe"), 2, "force must be true or false, got 'maybe'"),
    Case("adore-no-controller", ("method=adore", "method.train_if_missing=false", "method.artifacts_dir={tmp}/none",
                                 "dataset.limit=1"), 2, "no ADORE controller at {tmp}/none/"),
    Case("old-adore-key", ("method=adore", "adore.train_if_missing=false"), 2,
         "ADORE's settings moved into its method config: use method.train_if_missing="),
]  # fmt: skip


# ------------------------------------------------------------------------------------- set-ups


def _model_folder(tmp: Path, *, tokenizer: bool = True, config: str | None = None) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config or (SMOLLM2 / "config.json").read_text())
    if tokenizer:
        (folder / "tokenizer.json").symlink_to(SMOLLM2 / "tokenizer.json")
    return folder


def _safetensors(path: Path, declared: int, written: int) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [declared // 4], "data_offsets": [0, declared]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * written)


def truncated_weights(tmp: Path) -> None:
    _safetensors(_model_folder(tmp) / "model.safetensors", declared=4096, written=1000)


def no_tokenizer(tmp: Path) -> None:
    _safetensors(_model_folder(tmp, tokenizer=False) / "model.safetensors", declared=64, written=64)


def malformed_config(tmp: Path) -> None:
    _model_folder(tmp, config='{"model_type": "llama",')


def no_weights(tmp: Path) -> None:
    _model_folder(tmp)


def binary_aclsum(tmp: Path) -> None:
    (tmp / "papers.jsonl").write_bytes(bytes(range(128, 256)) * 4)


GOOD_PAPER = {"id": "a", "title": "T", "sentences": {"abstract": ["x ."]},
              "summary": {"challenge": "c", "approach": "a", "outcome": "o"}}  # fmt: skip


def corrupt_aclsum(tmp: Path) -> None:
    (tmp / "papers.jsonl").write_text(json.dumps(GOOD_PAPER) + '\n{"id": "b", "title"\n')


def columnless_aclsum(tmp: Path) -> None:
    (tmp / "papers.jsonl").write_text(json.dumps({"id": "a", "title": "T"}) + "\n")


def csv_aclsum(tmp: Path) -> None:
    (tmp / "papers.csv").write_text("id,title,abstract\na,T,x\n")


def a_file(tmp: Path) -> None:
    (tmp / "file").write_text("not a folder\n")


def a_book(tmp: Path) -> None:
    (tmp / "book.txt").write_text("It was the best of times, it was the worst of times. " * 8)


def binary_book(tmp: Path) -> None:
    (tmp / "book.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(200))


def truncated_controller(tmp: Path) -> None:
    from adore.methods import build_policy
    from adore.release.artifacts import artifact_dir

    policy = build_policy("adore", artifacts_dir=str(tmp / "art"))
    folder = artifact_dir(policy, "smollm2-135m", "aclsum")
    folder.mkdir(parents=True)
    (folder / "controller.pt").write_bytes(b"PK\x03\x04" + bytes(100))  # a zip cut short


def bad_rows(tmp: Path, results: Path) -> None:
    with (results / "runs.jsonl").open("a") as handle:
        handle.write(json.dumps({**SEED_ROWS[0], "run_id": "seed-3", "m": "sixteen"}) + "\n")
        handle.write(json.dumps({"hello": "world"}) + "\n")


# ----------------------------------------------------------------------------------- the table


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``python run.py ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = [str(ROOT / "run.py"), *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run.cli(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for row in SEED_ROWS:
        append_row(results, row)
    return results


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_exit_code_and_no_row_lost(case: Case, tmp_path: Path, seeded: Path):
    tmp = tmp_path / "case"
    tmp.mkdir()
    if case.setup == "bad_rows":
        bad_rows(tmp, seeded)
    elif case.setup:
        globals()[case.setup](tmp)
    before = (seeded / "runs.jsonl").read_bytes()
    fill = {"tmp": str(tmp), "results": str(seeded)}
    argv = [arg.format(**fill) for arg in case.args] + ([f"results_dir={seeded}"] if case.results_arg else [])
    code, out, err = run_cli(argv)
    assert "Traceback" not in out + err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    expected = ("error: " if case.code == 2 else "") + case.line.format(**fill)
    assert (code, lines[:1]) == (case.code, [lines[0]]) and lines[0].startswith(expected), err[-3000:]
    if case.code != 0:
        assert len(lines) == 1, err[-3000:]
    assert (seeded / "runs.jsonl").read_bytes() == before


def test_the_table_covers_the_cases_of_the_issue():
    """Issue 15's cases (a model folder four ways, results_dir five) and the 20 of earlier issues: the
    table must not shrink, and no two cases share a name."""
    assert len(CASES) >= 59 and len({case.name for case in CASES}) == len(CASES)


def test_report_names_each_bad_row_by_line_and_keeps_the_good_ones(seeded: Path):
    bad_rows(seeded.parent, seeded)
    code, out, err = run_cli(["task=report", f"results_dir={seeded}"])
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert [w.split(" line ")[1].split(" ")[0] for w in warnings] == ["3", "4"]
    assert "has none of the row keys" in warnings[1]
    assert "| h2o | - | 32 |" in out and "| full | - | - |" in out  # both good rows tabulated


def test_a_train_command_in_the_error_keeps_the_runs_own_adore_settings(tmp_path: Path):
    code, _, err = run_cli(["method=adore", "method.train_if_missing=false", f"method.artifacts_dir={tmp_path}/my art",
                            "method.controller.width=64", "method.labels.horizon=1", f"results_dir={tmp_path}"])  # fmt: skip
    assert code == 2
    command = err.split("run `")[1].split("`")[0]
    assert f"'method.artifacts_dir={tmp_path}/my art'" in command  # quoted for the shell: it has a space
    assert "method.controller.width=64" in command and "method.labels.horizon=1" in command
    assert "max_positions" not in command  # only what differs from the defaults


# ------------------------------------------------------------------- checks that need no CLI


def test_unwritable_results_are_refused_before_any_work(tmp_path: Path, monkeypatch):
    from experiments.infra.checks import check_results_dir

    results = tmp_path / "results"
    append_row(results, SEED_ROWS[0])
    before = (results / "runs.jsonl").read_bytes()
    if not ROOT_USER:
        (results / "runs.jsonl").chmod(0o444)
        with pytest.raises(ConfigError, match="is not writable: Permission denied"):
            check_results_dir(results)
        (results / "runs.jsonl").chmod(0o644)
        results.chmod(0o555)
        with pytest.raises(ConfigError, match="is not writable: Permission denied"):
            check_results_dir(results)
        results.chmod(0o755)
    real_open = os.open

    def read_only(path, flags, *args):  # what a read-only runs.jsonl or mount does, even to root
        if Path(path).name == "runs.jsonl" and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(ConfigError, match=r"is not writable: Permission denied \(.*runs.jsonl\)"):
        check_results_dir(results)
    monkeypatch.undo()
    assert (results / "runs.jsonl").read_bytes() == before


def test_a_valid_row_without_its_newline_is_kept_and_a_torn_one_cut(tmp_path: Path, capsys):
    append_row(tmp_path, make_row(run_id="a"))
    with (tmp_path / "runs.jsonl").open("a") as handle:
        handle.write(json.dumps(make_row(run_id="hand-edited")))  # complete, but no final newline
    append_row(tmp_path, make_row(run_id="b"))
    assert "added it (the row is kept)" in capsys.readouterr().err
    assert [r["run_id"] for r in read_rows(tmp_path)] == ["a", "hand-edited", "b"]
    with (tmp_path / "runs.jsonl").open("a") as handle:
        handle.write('{"run_id": "torn", "met')
    append_row(tmp_path, make_row(run_id="c"))
    assert "dropped a torn last line" in capsys.readouterr().err
    assert [r["run_id"] for r in read_rows(tmp_path)] == ["a", "hand-edited", "b", "c"]


def test_a_scoring_failure_keeps_the_predictions_and_rescore_writes_the_row(tmp_path: Path, monkeypatch):
    from experiments.infra.runtime import Run, policy_from_config
    from experiments.tasks import generation
    from tests.test_sweeps import composed

    cfg = composed("method=h2o", "method.m=32", f"results_dir={tmp_path}")
    run_ = Run(cfg, task="generate")
    records = [{"id": "p1", "prediction": "", "reference": "a summary"},  # empty: scores 0, no bert-score call
               {"id": "p2", "prediction": "a summary", "reference": "a summary"}]  # fmt: skip
    generation.write_predictions(run_.run_dir / "predictions.jsonl", records)
    decoded = {"n_samples": 2, "decode_tok_s": 5.0, "kv_cache_mb": 1.0}
    model = {"name": "smollm2-135m", "device": "cpu", "dtype": "torch.float32"}
    (run_.run_dir / generation.DECODED_FILE).write_text(json.dumps({"row": decoded, "model": model, "wall_s": 3.0}))
    (run_.run_dir / "config.json").write_text(json.dumps(cfg))
    append_row(tmp_path, SEED_ROWS[0])
    before = (tmp_path / "runs.jsonl").read_bytes()

    def broken(*args, **kwargs):
        raise AttributeError("BertTokenizer has no attribute build_inputs_with_special_tokens")

    monkeypatch.setattr(generation, "score_generation", broken)
    policy = policy_from_config(cfg["method"], cfg)
    with pytest.raises(HarnessError) as error:
        generation.score_and_finish(run_, policy, SimpleNamespace(**model), records, decoded)
    message = str(error.value)
    assert "\n" not in message and message.startswith("scoring failed after decoding (AttributeError: BertTokenizer")
    assert f"the 2 predictions are kept in {run_.run_dir / 'predictions.jsonl'}" in message
    assert message.endswith(f"python run.py task=rescore task.run_dir={run_.run_dir}")
    assert (tmp_path / "runs.jsonl").read_bytes() == before
    monkeypatch.undo()

    code, _, err = run_cli(["task=rescore", f"task.run_dir={run_.run_dir}", f"results_dir={tmp_path}"])
    assert code == 0, err[-3000:]
    rows = read_rows(tmp_path)
    assert [r["run_id"] for r in rows] == ["seed-1", run_.run_id]
    assert rows[1]["config_hash"] == rows[1]["config_hash"] and rows[1]["decode_tok_s"] == 5.0
    assert rows[1]["n_samples"] == 2 and rows[1]["wall_s"] >= 3.0
    scores = [json.loads(line)["scores"] for line in (run_.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert scores[0]["bertscore_f1"] == 0.0 and scores[1]["bertscore_f1"] > 90  # empty scores 0; equal text high
    code, _, err = run_cli(["task=rescore", f"task.run_dir={run_.run_dir}", f"results_dir={tmp_path}"])
    assert code == 2 and "already has a row" in err


def test_positions_past_training_are_said_and_recorded_and_a_budget_that_never_evicts_is_said(capsys):
    from adore.methods import build_policy
    from experiments.infra.results import BEYOND_POSITIONS_KEY
    from experiments.infra.runtime import position_notes

    loaded = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=100)), name="tiny")
    assert position_notes(loaded, build_policy("full"), 150, "the stream") == {BEYOND_POSITIONS_KEY: True}
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: the stream reach position 150, past the 100 positions tiny was trained on")
    assert position_notes(loaded, build_policy("window", m=16), 90, "prompts") == {}
    assert capsys.readouterr().err == ""
    # StreamingLLM's cache-relative positions never pass m + 1, however long the stream.
    assert position_notes(loaded, build_policy("streaming_llm", m=16), 1000, "the stream") == {}
    position_notes(loaded, build_policy("window", m=10**12), 90, "prompts")
    assert "window evicts nothing, so this run gives full attention's numbers" in capsys.readouterr().err
    assert make_row(**{BEYOND_POSITIONS_KEY: True})[BEYOND_POSITIONS_KEY] is True


def test_an_unreadable_controller_is_retrained_when_training_is_allowed(tmp_path: Path, monkeypatch):
    from adore.release import artifacts
    from experiments.infra.runtime import policy_from_config, run_context
    from tests.test_sweeps import composed

    class Trained(Exception):
        pass

    def train(*args):
        raise Trained  # stands for the 2.5-minute training: only that it is chosen matters here

    truncated_controller(tmp_path)
    cfg = composed("method=adore", f"method.artifacts_dir={tmp_path}/art", "model.name=smollm2-135m")
    policy = policy_from_config(cfg["method"], cfg)
    context = run_context(cfg)
    artifacts.check_controller_available(context, policy)  # trainable: no error before the model loads
    monkeypatch.setattr(artifacts, "train_adore", train)
    with pytest.raises(Trained):
        artifacts.prepare_adore(context, SimpleNamespace(name="smollm2-135m", model=SimpleNamespace()), policy)


# ------------------------------------------------------------------------- signals (processes)


def _start(*args: str, results: Path) -> subprocess.Popen:
    # Unbuffered: a pipe would hold the first job's table until the process ends, and the signal
    # would then arrive after the whole sweep (the test raced on it).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # SIGINT back to its default in the child: a suite started in the background (`make test &`)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all.
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"results_dir={results}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


@pytest.mark.model
def test_ctrl_c_after_a_finished_job_is_one_line_exit_130_and_keeps_its_row(seeded: Path):
    before = (seeded / "runs.jsonl").read_bytes()
    process = _start("-m", "method=window,h2o", "method.m=16", "dataset.limit=1", "max_new_tokens=4", results=seeded)
    for line in process.stdout:  # the first job's table: its row is written
        if line.startswith("| window |"):
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"interrupted by Ctrl-C (SIGINT): 1 row(s) of finished runs are in {seeded}/runs.jsonl")
    assert last.endswith("rerun the same command to resume (runs that have a row are skipped)")
    data = (seeded / "runs.jsonl").read_bytes()
    assert data.startswith(before) and [r["method"] for r in read_rows(seeded)] == ["h2o", "full", "window"]


@pytest.mark.model
def test_sigterm_mid_run_is_one_line_exit_143_and_no_row_is_lost(seeded: Path):
    before = (seeded / "runs.jsonl").read_bytes()
    process = _start("method=window", "method.m=16", "dataset.limit=4", "max_new_tokens=64", results=seeded)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any((seeded / "runs").glob("*/config.json")):
        time.sleep(0.2)  # decoding has started once the run folder holds its config
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"interrupted by SIGTERM: no run finished in this command, so no row was added to {seeded}")
    assert (seeded / "runs.jsonl").read_bytes() == before


def test_a_bound_controller_reports_how_much_it_trained_on_in_rows(tmp_path: Path):
    """Two controllers of one training length differ in rows by ``train_sequences`` and
    ``train_epochs`` (from their training.json), not by a hidden checkpoint hash alone."""
    import torch

    from adore.release import artifacts
    from adore.release.controller import ControllerConfig, ImportanceController
    from experiments.infra.runtime import policy_from_config, run_context
    from tests.test_sweeps import composed

    cfg = composed("method=adore", f"method.artifacts_dir={tmp_path}/art", "model.name=tiny")
    policy = policy_from_config(cfg["method"], cfg)
    folder = artifacts.artifact_dir(policy, "tiny", "aclsum")
    folder.mkdir(parents=True)
    config = ControllerConfig(**policy.controller)
    controller = ImportanceController(8, config)
    controller.trained_positions.fill_(300)
    torch.save({"config": config.to_dict(), "state_dict": controller.state_dict()}, folder / "controller.pt")
    report = {"train_sequences": 5, "epoch_losses": [0.9, 0.7], "recall_at_m": 0.5, "m_for_recall": 64}
    (folder / "training.json").write_text(json.dumps(report))
    model = SimpleNamespace(get_input_embeddings=lambda: torch.nn.Embedding(10, 8))
    artifacts.prepare_adore(run_context(cfg), SimpleNamespace(name="tiny", model=model, device="cpu"), policy)
    described = policy.describe()
    assert (described["train_sequences"], described["train_epochs"]) == (5, 2)
    assert (described["train_length"], described["recall_at_m"]) == (300, 0.5)
    assert described["controller_checkpoint"] == folder.name
