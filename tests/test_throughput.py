"""The throughput task's measurement code (never its speed): rows, KV accounting, roofline, packing."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import LlamaConfig

from adore import ConfigError
from adore.methods import build_policy
from experiments.reporting.throughput_plots import method_label
from experiments.results import COST_KEYS, ROW_KEYS, SPREAD_KEYS, THREAD_KEYS, THROUGHPUT_KEYS, read_rows
from experiments.throughput import (
    decode_kv_tokens,
    kv_bytes_per_token,
    largest_batch,
    method_specs,
    packing_gain,
    packing_gains,
    reference_labels,
    roofline_tok_s,
    speedups,
    weight_bytes,
)
from tests.conftest import SMOLLM2, tiny_llama


def test_kv_bytes_per_token_of_smollm2_shape():
    # 30 layers x (K and V) x 3 KV heads x 64 dims x 4 bytes (fp32) = 46,080 bytes.
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=30)
    assert kv_bytes_per_token(config, torch.float32) == 46_080
    assert kv_bytes_per_token(config, torch.bfloat16) == 23_040


def test_weight_bytes_counts_tied_matrices_once():
    model = tiny_llama()
    model.lm_head.weight = model.model.embed_tokens.weight  # tie
    parameters = {p.data_ptr(): p.numel() * 4 for p in model.parameters()}
    assert weight_bytes(model) == sum(parameters.values())
    assert weight_bytes(model) < sum(p.numel() * 4 for p in model.parameters()) + model.lm_head.weight.numel() * 4


def test_roofline_matches_a_hand_computation():
    # 10 GB/s; a step reads 400 MB of weights plus 100 MB of KV for the whole batch of 4:
    # 4 tokens per 0.05 s = 80 tokens/s.
    assert roofline_tok_s(10e9, 400_000_000, 100_000_000, 4) == pytest.approx(80.0)
    assert roofline_tok_s(10e9, 500_000_000, 0, 1) == pytest.approx(20.0)


def test_decode_kv_tokens_per_method():
    assert decode_kv_tokens(build_policy("full"), 4096, 32) == 4128
    assert decode_kv_tokens(build_policy("window", m=128), 4096, 32) == 129
    assert decode_kv_tokens(build_policy("window", m=128), 64, 32) == 96  # the budget is never reached
    assert decode_kv_tokens(build_policy("adore", m=128, R=8), 4096, 32) == 137  # m + current + R rebuilt


@pytest.mark.parametrize(
    ("budget", "per_sequence", "max_batch", "expected"),
    [(100, 30, 10, 3), (90, 30, 10, 3), (89, 30, 10, 2), (29, 30, 10, 0), (10_000, 30, 16, 16)],
)
def test_packing_picks_the_largest_batch_that_fits(budget, per_sequence, max_batch, expected):
    batch = largest_batch(budget, per_sequence, max_batch)
    assert batch == expected
    assert batch * per_sequence <= budget
    assert batch == max_batch or (batch + 1) * per_sequence > budget


def test_packing_gain_is_the_papers_measure():
    assert packing_gain(32.18, 10.0) == pytest.approx(221.8)
    assert packing_gain(10.0, 10.0) == 0.0
    entries = [
        {"name": "full", "method": "full", "decode_tok_s": 10.0},
        {"name": "adore", "method": "adore m=128 R=0", "decode_tok_s": 32.18},
        {"name": "adore", "method": "adore m=128 R=8", "decode_tok_s": 20.0},
        {"name": "adore", "method": "adore m=128 R=16", "batch_size": 0},  # did not fit: no speed
    ]
    gains = packing_gains(entries)
    assert list(gains) == ["adore m=128 R=0", "adore m=128 R=8"]
    assert gains["adore m=128 R=0"] == pytest.approx(221.8) and gains["adore m=128 R=8"] == pytest.approx(100.0)
    assert packing_gains(entries[1:]) == {}  # no full to compare with


def test_method_specs_apply_run_budget_but_not_to_full():
    entries = ["full", "window", {"name": "adore", "R": 8}, {"name": "adore", "slicing": "matmul"}]
    specs = method_specs({"methods": entries, "m": 96, "R": 0})
    assert [(s.name, s.params.get("m"), s.params.get("R")) for s in specs] == [
        ("full", None, None), ("window", 96, None), ("adore", 96, 8), ("adore", 96, 0)
    ]  # fmt: skip
    assert [s.label for s in specs[2:]] == ["adore m=96 R=8", "adore m=96 R=0 slicing=matmul"]


@pytest.mark.model
def test_throughput_rows_carry_every_key_and_exact_kv_bytes(tmp_path):
    from hydra import compose, initialize_config_dir

    from experiments.throughput import refresh, run_throughput
    from tests.conftest import ROOT

    overrides = [
        "task=throughput", f"model.path={SMOLLM2}", f"results_dir={tmp_path}", "task.text=null",
        "task.methods=[hf_generate,full,window]", "task.m=8", "task.context_lengths=[12]",
        "task.batch_sizes=[1,2]", "task.new_tokens=5", "task.warmup_steps=1",
        "task.packing.kv_budget_mb=0.8", "task.packing.context_length=12", "task.packing.max_batch=4",
        "task.packing.methods=[full,window]", "task.profile.context_length=12", "task.profile.new_tokens=4",
        "task.profile.methods=[window]", "task.profile.batch_sizes=[1,2]", "task.interleave.turns=3",
        "task.interleave.steps=2",
    ]  # fmt: skip
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    run_throughput(cfg)
    rows = read_rows(tmp_path)
    grid = [r for r in rows if r["task"] == "throughput"]
    assert [(r["method"], r["batch_size"]) for r in grid] == [
        (m, b) for b in (1, 2) for m in ("hf_generate", "full", "window")
    ]
    per_token = 46_080
    # Tokens' worth of KV reserved per sequence, at the peak and during decoding. hf_generate's cache
    # holds the prompt and every generated token but the last; the engine's full attention reserves
    # prompt + new tokens once; window (one plan after the forward) holds the 12-token prompt in every
    # layer during the prefill, then m + 1 slots per layer.
    peak = {"hf_generate": 16, "full": 17, "window": 12}
    decoding = {"hf_generate": 16, "full": 17, "window": 8 + 1}
    for row in rows:
        assert tuple(row) == ROW_KEYS + THROUGHPUT_KEYS + SPREAD_KEYS + COST_KEYS + THREAD_KEYS
        assert row["cpu_threads"] == torch.get_num_threads()
        assert row["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "unset")
        assert 0 < row["decode_tok_s_p10"] <= row["decode_tok_s_p90"]
        assert row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0 and row["peak_mem_mb"] > 0
        assert row["ms_per_token_p50"] <= row["ms_per_token_p90"]
        assert row["floor_ms"] > 0 and row["step_over_floor"] > 0
        batch = row["batch_size"]
        assert row["kv_cache_mb"] == pytest.approx(batch * peak[row["method"]] * per_token / 2**20, abs=1e-3)
        assert row["kv_decode_mb"] == pytest.approx(batch * decoding[row["method"]] * per_token / 2**20, abs=1e-3)
    # 0.8 MB of KV: full holds 17 tokens x 45 KiB = 0.75 MB per sequence (batch 1); window holds 8 + 1
    # tokens = 0.40 MB (batch 2; 3 would need 1.19 MB).
    summary = json.loads(next(tmp_path.glob("runs/*/summary.json")).read_text())
    assert [(e["name"], e["batch_size"]) for e in summary["packing"]["methods"]] == [("full", 1), ("window", 2)]
    # One definition of memory: what packing budgets per sequence is what the engine reserved.
    for entry in summary["packing"]["methods"]:
        assert entry["bytes_per_sequence"] == decoding[entry["name"]] * per_token
    assert [(r["method"], r["batch_size"]) for r in rows if r["task"] == "packing"] == [("full", 1), ("window", 2)]
    assert summary["bandwidth_gb_s"] > 0 and all(0 < r["fraction"] for r in summary["roofline"])
    assert sorted((r["method"], r["batch_size"]) for r in summary["roofline"]) == sorted(
        (method_label(r), r["batch_size"]) for r in grid
    )  # one fraction for every row of the grid
    profile = summary["profile"]["window m=8"]
    assert set(profile) >= {"eviction (plan and slicing)", "attention", "step"} and profile["step"] > 0
    assert all(value >= 0 for value in profile.values())
    assert summary["profile"].keys() == {"window m=8", "window m=8 @ batch 2"}  # full is not in profile.methods
    for parts in summary["profile"].values():  # decode steps alone: every one appends and evicts
        assert parts["cache append and masks"] > 0 and parts["eviction (plan and slicing)"] > 0
        assert sum(v for k, v in parts.items() if k != "step") == pytest.approx(parts["step"])
    folder = next(tmp_path.glob("runs/*"))
    for figure in ("tok_s_vs_context.png", "memory_vs_context.pdf", "packing.png", "step_profile.png"):
        assert (folder / figure).is_file(), figure
        (folder / figure).unlink()
    # Speedups over the default reference (full), keyed by point, equal to the rows' tok/s ratios.
    rates = {(r["method"], r["batch_size"]): r["decode_tok_s"] for r in grid}
    entries = {(e["method"], e["batch_size"]): e for e in summary["speedups"]}
    assert set(entries) == {(m, b) for m in ("hf_generate", "window m=8") for b in (1, 2)}
    for (method, batch), entry in entries.items():
        assert entry["reference"] == "full" and entry["context_length"] == 12 and entry["steps"] == 3
        name = method.split()[0]
        assert entry["ratio"] == pytest.approx(rates[(name, batch)] / rates[("full", batch)], rel=0.01)
        assert entry["ci"][0] <= entry["ratio"] <= entry["ci"][1]
    assert "Decode tok/s over full" in (folder / "table.md").read_text()
    # The interleaved pass: the engine's methods (not generate), 3 turns of 2 steps at every point.
    turns = {(t["method"], t["batch_size"]): t["rounds"] for t in summary["interleaved"]}
    assert set(turns) == {(m, b) for m in ("full", "window m=8") for b in (1, 2)}
    assert all(len(rounds) == 3 and all(len(turn) == 2 for turn in rounds) for rounds in turns.values())
    paired = {(e["method"], e["reference"], e["batch_size"]) for e in summary["interleaved_speedups"]}
    assert paired == {("window m=8", "full", 1), ("window m=8", "full", 2)}
    assert "Decode tok/s over full, interleaved turns" in (folder / "table.md").read_text()
    assert (folder / "speedups_turns.png").is_file()
    assert (folder / "speedups.png").is_file()
    (folder / "speedups.png").unlink()
    table = (folder / "table.md").read_text()
    assert refresh(folder) == table  # rebuilt from the rows and summary.json alone
    assert (folder / "speedups.png").is_file()
    assert (folder / "packing.png").is_file() and (folder / "tok_s_vs_context.png").is_file()


@pytest.mark.model
def test_repeats_go_round_the_methods_and_pool_into_one_row(tmp_path, monkeypatch):
    """task.repeats=2: each method runs once per round (full, window, full, window), and its row
    pools both rounds' timed steps."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.tasks import throughput
    from tests.conftest import ROOT

    calls: list[tuple[str, throughput.Measurement]] = []
    floors: list[float] = []
    real, real_floor = throughput.measure, throughput.measure_weight_floor

    def recording(loaded, spec, *args):
        point = real(loaded, spec, *args)
        calls.append((spec.label, point))
        return point

    def recording_floor(*args):
        floors.append(real_floor(*args))
        return floors[-1]

    monkeypatch.setattr(throughput, "measure", recording)
    monkeypatch.setattr(throughput, "measure_weight_floor", recording_floor)
    overrides = [
        "task=throughput", f"model.path={SMOLLM2}", f"results_dir={tmp_path}", "task.text=null",
        "task.methods=[full,window]", "task.m=8", "task.context_lengths=[12]", "task.batch_sizes=[1]",
        "task.new_tokens=4", "task.warmup_steps=1", "task.repeats=2", "task.packing.kv_budget_mb=null",
        "task.profile.context_length=null",
    ]  # fmt: skip
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    throughput.run_throughput(cfg)
    timed = calls[2:]  # after one warm-up per method
    assert [label for label, _ in timed] == ["full", "window m=8", "full", "window m=8"]
    rows = read_rows(tmp_path)
    for row, label in zip(rows, ["full", "window m=8"], strict=True):
        rounds = [point for name, point in timed if name == label]
        assert all(len(point.step_s) == 2 for point in rounds)  # 4 tokens: 3 decode steps, the first a warm-up
        assert row["decode_tok_s"] == round(throughput.Measurement.pooled(rounds).decode_tok_s, 2)
        assert row["floor_ms"] == round(1000 * min(floors), 2) and len(floors) == 2  # one per round, the best


def test_speedups_divide_mean_steps_at_the_same_point_only():
    """Each method over each reference where both ran: the reference's mean step over the method's
    (so the ratio of their tok/s); rounds constant within themselves give a point interval."""
    timings = [
        {"method": "full", "context_length": 8, "batch_size": 1, "rounds": [[0.2, 0.2], [0.4]]},
        {"method": "window m=4", "context_length": 8, "batch_size": 1, "rounds": [[0.1, 0.1], [0.2]]},
        {"method": "window m=4", "context_length": 16, "batch_size": 1, "rounds": [[0.1], [0.1]]},  # no full here
        {"method": "h2o m=4", "context_length": 8, "batch_size": 1, "rounds": [[0.3, 0.1], [0.2]]},
    ]
    entries = speedups(timings, ["full", "window m=4"])
    got = {(e["method"], e["reference"], e["context_length"]): e for e in entries}
    assert set(got) == {("window m=4", "full", 8), ("h2o m=4", "full", 8), ("full", "window m=4", 8),
                        ("h2o m=4", "window m=4", 8)}  # fmt: skip
    window = got[("window m=4", "full", 8)]
    assert window["ratio"] == pytest.approx(2.0) and window["ci"] == pytest.approx([2.0, 2.0])
    assert (window["steps"], window["reference_steps"], window["rounds"]) == (3, 3, 2)
    assert window["per_round"] == pytest.approx([2.0, 2.0])
    assert got[("full", "window m=4", 8)]["ratio"] == pytest.approx(0.5)
    h2o = got[("h2o m=4", "full", 8)]
    assert h2o["ratio"] == pytest.approx((0.8 / 3) / (0.6 / 3)) and h2o["ci"][0] < h2o["ratio"] < h2o["ci"][1]
    assert h2o["per_round"] == pytest.approx([0.2 / 0.2, 0.4 / 0.2])  # round 1: mean 0.2 against 0.2


def test_a_session_decoding_in_turns_is_generate_continued(tiny_model):
    """Turns of 2 and 3 steps continue one decode: the tokens generate() gives, at consecutive positions."""
    from adore import DecodingEngine
    from experiments.tasks.throughput import DecodeSession

    prompt = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    engine = DecodingEngine(tiny_model, build_policy("full"))
    session = DecodeSession(engine, prompt, 5)
    assert len(session.steps(2)) == 2 and len(session.steps(3)) == 3
    assert [int(t) for t in session.fed] == engine.generate(prompt.tolist(), 6).tokens[0][:5]
    assert session.cache.layers[0].positions[0, 0].tolist() == list(range(9 + 5))


def test_references_name_one_method_each():
    specs = method_specs({"methods": ["full", "window", {"name": "adore", "R": 0}, {"name": "adore", "R": 8}],
                          "m": 16, "R": 0})  # fmt: skip
    assert reference_labels(["full", "window", "adore m=16 R=8"], specs) == ["full", "window m=16", "adore m=16 R=8"]
    assert reference_labels(None, specs) == ["full"]  # the default: full where the run has it
    assert reference_labels(None, specs[1:]) == [] and reference_labels([], specs) == []
    with pytest.raises(ConfigError, match="'adore' matches 'adore m=16 R=0', 'adore m=16 R=8'; name one"):
        reference_labels(["adore"], specs)
    with pytest.raises(ConfigError, match="'h2o' is not in task.methods"):
        reference_labels(["h2o"], specs)


def test_pooled_repeats_keep_every_step_the_median_prefill_and_the_largest_memory():
    from experiments.tasks.throughput import Measurement

    repeats = [
        Measurement(
            prefill_s=p,
            step_s=steps,
            batch_size=2,
            prompt_tokens=8,
            kv_bytes=kv,
            kv_decode_bytes=kv // 2,
            peak_mem_mb=mem,
        )
        for p, steps, kv, mem in ((0.3, [0.01, 0.02], 100, 5.0), (0.1, [0.03], 300, 4.0), (0.2, [0.04], 200, 6.0))
    ]
    pooled = Measurement.pooled(repeats)
    assert pooled.step_s == [0.01, 0.02, 0.03, 0.04] and pooled.prefill_s == 0.2
    assert (pooled.kv_bytes, pooled.kv_decode_bytes, pooled.peak_mem_mb) == (300, 150, 6.0)
    assert pooled.decode_tok_s == pytest.approx(2 * 4 / 0.10)


def test_decode_rate_spread_stays_between_the_measured_steps():
    """p10/p90 of the per-step rate come from the measured steps: a few steps with one slow outlier
    must not extrapolate the p10 below the slowest step's rate (or below zero)."""
    from experiments.tasks.throughput import Measurement

    steps = [0.010, 0.011, 0.012, 0.500]  # batch 2: rates 200, 181.8, 166.7 and 4 tokens/s
    point = Measurement(prefill_s=0.1, step_s=steps, batch_size=2, prompt_tokens=8, kv_bytes=0, kv_decode_bytes=0,
                        peak_mem_mb=0.0)  # fmt: skip
    p10, p90 = point.decode_tok_s_spread()
    rates = sorted(2 / s for s in steps)
    assert rates[0] <= p10 <= rates[1] and rates[-2] <= p90 <= rates[-1]


def _composed(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import ROOT

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=["task=throughput", *overrides]), resolve=True)


@pytest.mark.parametrize(
    "override",
    [
        "task.text=null",
        "task.packing.kv_budget_mb=null",
        "task.packing.kv_budget_mb=0.8",
        "task.profile.context_length=null",
        "task.references=null",
    ],
)
def test_the_throughput_tasks_documented_nulls_pass_the_config_check(override):
    """conf/task/throughput.yaml: null text (random ids), null kv_budget_mb (no packing), null
    profile.context_length (no profile), and a budget in fractions of a MB (make throughput uses the nulls)."""
    from experiments.infra.checks import check_config

    check_config(_composed(override))


def test_a_kv_budget_in_words_is_refused():
    from adore import ConfigError
    from experiments.infra.checks import check_config

    with pytest.raises(ConfigError, match="task.packing.kv_budget_mb must be a number or null"):
        check_config(_composed("task.packing.kv_budget_mb=lots"))


def test_refreshing_a_folder_that_is_no_run_exits_with_one_line(tmp_path):
    from experiments.tasks.throughput import main

    with pytest.raises(
        SystemExit, match=f"error: {tmp_path} has no summary.json; give the folder of a task=throughput run"
    ):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="usage: python -m experiments.tasks.throughput"):
        main([])
    moved = tmp_path / "elsewhere" / "runs" / "20260101-000000-abcdef"  # a run folder away from its rows
    moved.mkdir(parents=True)
    (moved / "summary.json").write_text("{}")
    with pytest.raises(SystemExit, match="error: no rows of run 20260101-000000-abcdef in .*runs.jsonl"):
        main([str(moved)])


@pytest.mark.parametrize("interleave", [{"turns": -1, "steps": 3}, {"turns": 4, "steps": 0}])
def test_a_bad_interleave_is_refused_before_the_model_loads(interleave):
    from experiments.tasks.throughput import _check_settings

    settings = {"context_lengths": [8], "batch_sizes": [1], "new_tokens": 4, "warmup_steps": 1, "repeats": 1,
                "interleave": interleave}  # fmt: skip
    with pytest.raises(ConfigError, match="task.interleave needs turns >= 0"):
        _check_settings(settings)
