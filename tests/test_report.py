"""The report: tables and figures from a fixture results file (a corrupt line included), rows merged
from several machines, missing data, and the notebook that regenerates the figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from experiments.report import build_figures, load_frame, merged_rows, run_report
from experiments.results import append_row, make_row
from tests.conftest import ROOT

MODEL = "smollm2-135m"
FIGURES = (
    f"quality_vs_m_aclsum_{MODEL}",
    f"quality_vs_m_gsm8k_{MODEL}",
    f"adore_vs_R_aclsum_{MODEL}",
    f"quality_vs_m_sharegpt_{MODEL}",
    f"adore_by_scored_by_sharegpt_{MODEL}",
    f"adore_vs_R_sharegpt_{MODEL}",
    f"stream_perplexity_gutenberg_{MODEL}",
    f"throughput_vs_context_aclsum_{MODEL}",
)


def generate_row(method: str, m: int | None, rouge: float, R: int | None = None, dataset: str = "aclsum", **extra):
    params = {"m": m} if R is None else {"m": m, "R": R, "K": 32}
    return make_row(
        run_id=f"{method}-{m}-{R}-{dataset}-{rouge}", timestamp=extra.pop("timestamp", "2026-11-28T10:00:00+0000"),
        task="generate", method=method, method_params=params, m=m, R=R, dataset=dataset, n_samples=4, model=MODEL,
        rougeL=rouge, bertscore_f1=rouge + 30, bleu=rouge / 4, decode_tok_s=20.0 + rouge / 10, kv_cache_mb=m or 80.0,
        **extra,
    )  # fmt: skip


def write_fixture(results_dir: Path) -> None:
    """Generate rows (three methods at two budgets, full, ADORE at two R), an older duplicate, a math
    dataset with accuracy, two stream runs with their windows.json, throughput rows, a corrupt line."""
    rows = [generate_row("h2o", 64, 11.0, timestamp="2026-11-28T09:00:00+0000")]  # replaced below
    for m in (32, 64):
        rows += [generate_row("window", m, 10.0 + m / 16), generate_row("h2o", m, 12.0 + m / 16)]
        rows.append(generate_row("adore", m, 13.0 + m / 16, R=4))
    rows += [generate_row("adore", 64, 15.5, R=0), generate_row("full", None, 20.0)]
    rows += [generate_row("window", m, 5.0, dataset="gsm8k", accuracy=float(m) / 8) for m in (32, 64)]
    # the controller ablation: three scorers at R=0, and the GRU again at R=4 (not comparable: left out)
    for rouge, scorer, recall, R in ((14.0, "gru", 0.6, 0), (12.0, "mlp", 0.4, 0), (13.0, "attention", 0.7, 0),
                                     (30.0, "gru", 0.6, 4)):  # fmt: skip
        row = generate_row("adore", 64, rouge, R=R, dataset="sharegpt", rougeL_ci=[rouge - 1, rouge + 2])
        row["method_params"].update(scored_by=scorer, recall_at_m=recall)
        rows.append(row)
    for method, m, ppl in (("window", 64, 60.0), ("streaming_llm", 64, 25.0)):
        run_dir = results_dir / "runs" / f"stream-{method}"
        run_dir.mkdir(parents=True)
        windows = [{"start": s, "tokens": 16, "perplexity": ppl + s / 16} for s in range(0, 64, 16)]
        (run_dir / "windows.json").write_text(json.dumps(windows))
        rows.append(make_row(run_id=f"stream-{method}", task="stream", method=method, method_params={"m": m}, m=m,
                             dataset="gutenberg", n_samples=1, model=MODEL, perplexity=ppl, run_dir=str(run_dir)))  # fmt: skip
    for method in ("full", "window"):
        for context in (512, 1024):
            for batch in (1, 4):
                rows.append(make_row(
                    run_id=f"tp-{method}-{context}-{batch}", task="throughput", method=method,
                    method_params={"m": 128 if method == "window" else None}, m=128 if method == "window" else None,
                    dataset="aclsum", n_samples=batch, model=MODEL, decode_tok_s=1000.0 / context * batch,
                    context_length=context, batch_size=batch,
                ))  # fmt: skip
    for i, row in enumerate(rows):
        append_row(results_dir, row)
        if i == 3:
            with (results_dir / "runs.jsonl").open("a") as handle:
                handle.write('{"run_id": "broken", "method": \n')  # line 5


def test_report_writes_tables_and_figures_and_skips_a_corrupt_line(tmp_path):
    write_fixture(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "task=report", f"results_dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "runs.jsonl line 5 is not valid JSON" in warnings[0] and "skipped" in warnings[0]
    assert "Traceback" not in result.stderr

    tables = tmp_path / "tables"
    for stem in ("generate_aclsum", "generate_gsm8k", "stream_gutenberg", "throughput_aclsum"):
        for suffix in (".md", ".tex", ".csv"):
            assert (tables / f"{stem}{suffix}").stat().st_size > 0, f"{stem}{suffix}"
    csv = pd.read_csv(tables / "generate_aclsum.csv")
    assert list(csv.columns[:6]) == ["method", "model", "m", "R", "params", "n_samples"]
    assert "accuracy" not in csv.columns  # no aclsum row has one
    h2o = csv[(csv["method"] == "h2o") & (csv["m"] == 64)]
    assert h2o["rougeL"].tolist() == [16.0]  # the newest row of the configuration, not the 11.0 before it
    assert csv.loc[(csv["method"] == "adore") & (csv["m"] == 64) & (csv["R"] == 0), "bertscore_f1"].item() == 45.5
    assert csv["method"].tolist()[-1] == "full" and pd.isna(csv["m"].iloc[-1])  # full-cache methods last
    assert pd.read_csv(tables / "generate_gsm8k.csv")["accuracy"].tolist() == [4.0, 8.0]
    # The main table: a line per method variant, a column per m, full-cache methods in their own column.
    grid = (tables / "main_aclsum.md").read_text().split("\n\n")
    assert grid[0] == "ROUGE-L on aclsum, smollm2-135m, n=4" and grid[2].startswith("BERTScore-F1")
    assert grid[1].splitlines()[0] == "| method | m=32 | m=64 | no eviction |"
    assert grid[1].splitlines()[2:] == ["| full |  |  | 20.00 |", "| window | 12.00 | 14.00 |  |",
                                        "| h2o | 14.00 | 16.00 |  |", "| adore R=0 |  | 15.50 |  |",
                                        "| adore R=4 | 15.00 | 17.00 |  |"]  # fmt: skip
    sharegpt = (tables / "main_sharegpt.md").read_text()
    assert sharegpt.startswith("ROUGE-L on sharegpt, smollm2-135m, n=4, 95% bootstrap intervals")
    assert "| adore R=0 scored_by=gru | 14.00 [13.00, 16.00] |" in sharegpt
    assert pd.read_csv(tables / "stream_gutenberg.csv")["perplexity"].tolist() == [25.0, 60.0]
    assert len(pd.read_csv(tables / "throughput_aclsum.csv")) == 8
    markdown = (tables / "generate_aclsum.md").read_text().splitlines()
    assert markdown[0].startswith("| method | model | m | R | other parameters | n | ROUGE-L | BERTScore-F1 |")
    assert "| h2o | smollm2-135m | 64 | - | - | 4 | 16.00 | 46.00 |" in "\n".join(markdown)
    latex = (tables / "generate_aclsum.tex").read_text()
    assert "\\begin{tabular}{llllllrrrrr}" in latex and "\\toprule" in latex and "kv\\_compression" not in latex
    assert "h2o & smollm2-135m & 64 & - & - & 4 & 16.00 & 46.00" in latex

    for stem in FIGURES:
        for suffix in (".png", ".pdf"):
            assert (tmp_path / "figures" / f"{stem}{suffix}").stat().st_size > 1000, f"{stem}{suffix}"
    assert (tmp_path / "table.md").read_text().count("\n") == 2 + 14  # header, rule, 14 generate rows
    assert "skipped" not in result.stdout

    # A fresh clone has the tables but not the run folders: the streaming figure uses the tables' copy.
    windows = pd.read_csv(tables / "stream_windows_gutenberg.csv")
    assert windows.groupby("method")["perplexity"].first().to_dict() == {"streaming_llm": 25.0, "window": 60.0}
    shutil.rmtree(tmp_path / "runs")
    figures, skipped = build_figures(load_frame(tmp_path), tmp_path)
    assert f"stream_perplexity_gutenberg_{MODEL}" in figures and skipped == []


def test_figures_are_titled_labelled_and_skipped_without_data(tmp_path):
    write_fixture(tmp_path)
    figures, skipped = build_figures(load_frame(tmp_path), tmp_path)
    assert set(figures) == set(FIGURES) and skipped == []
    quality = figures[f"quality_vs_m_aclsum_{MODEL}"]
    assert quality.texts[0].get_text() == f"Quality against cache budget: {MODEL} on aclsum, n=4"
    assert [axis.get_xlabel() for axis in quality.axes] == ["cache budget m (tokens)"] * 2
    assert [axis.get_ylabel() for axis in quality.axes] == ["ROUGE-L F1 (0-100)", "BERTScore-F1 (0-100)"]
    legend = [text.get_text() for text in quality.legends[0].get_texts()]
    assert legend == ["window", "h2o", "adore R=0", "adore R=4", "full (no eviction)"]
    assert len(figures[f"quality_vs_m_gsm8k_{MODEL}"].axes) == 3  # accuracy too
    choices = figures[f"adore_by_scored_by_sharegpt_{MODEL}"]
    assert [axis.get_ylabel() for axis in choices.axes][:3] == [
        "ROUGE-L F1 (0-100)", "BERTScore-F1 (0-100)", "recall@m of the true top-K (held out)"]  # fmt: skip
    rouge = [c for c in choices.axes[0].containers if hasattr(c, "patches")]
    assert [[p.get_height() for p in c.patches] for c in rouge] == [[13.0], [14.0], [12.0]]  # attention, gru, mlp
    recall = [c for c in choices.axes[2].containers if hasattr(c, "patches")]
    assert [[p.get_height() for p in c.patches] for c in recall] == [[0.7], [0.6], [0.4]]
    assert "adore_vs_recall_at_m" not in " ".join(figures)  # a measured value is no swept parameter
    throughput = figures[f"throughput_vs_context_aclsum_{MODEL}"]
    assert [axis.get_title() for axis in throughput.axes] == ["batch size 1", "batch size 4"]
    assert throughput.axes[0].get_xlabel() == "context length (tokens)"

    only_full = tmp_path / "only_full"
    append_row(only_full, generate_row("full", None, 20.0))
    figures, skipped = build_figures(load_frame(only_full), only_full)
    assert figures == {} and len(skipped) == 5
    assert skipped[0].startswith("figure quality_vs_m skipped: needs generate rows at a cache budget m")


def test_report_without_rows_says_what_to_run(tmp_path, capsys):
    assert "no rows in" in run_report({"results_dir": str(tmp_path)})
    assert not (tmp_path / "tables").exists()


def test_rows_merged_from_many_nodes_count_once_and_latest_wins(tmp_path):
    old = generate_row("h2o", 64, 1.0, timestamp="2026-11-28T08:00:00+0000")
    new = generate_row("h2o", 64, 2.0, timestamp="2026-11-28T08:15:00+0100")  # 07:15 UTC: the oldest
    newer = generate_row("h2o", 64, 3.0, timestamp="2026-11-28T08:30:00+0000")
    # Node B's file (with the newest row) first, then node A's file twice: order in the file is not time.
    lines = [json.dumps(r) for r in (newer, old, new, old, new)]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    rows = merged_rows(tmp_path)
    assert [r["rougeL"] for r in rows] == [2.0, 1.0, 3.0]  # by time: 07:00Z, 08:00Z, 08:30Z
    frame = load_frame(tmp_path)
    assert frame["rougeL"].tolist() == [3.0]


def test_notebook_regenerates_the_figures(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    write_fixture(tmp_path)
    monkeypatch.setenv("ADORE_RESULTS_DIR", str(tmp_path))
    notebook = nbformat.read(ROOT / "notebooks" / "paper_figures.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # committed clean
    NotebookClient(notebook, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()  # fmt: skip
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(FIGURES)
    for stem in FIGURES:
        assert (tmp_path / "figures" / f"{stem}.pdf").is_file()
    assert (tmp_path / "tables" / "generate_aclsum.tex").is_file()


def test_a_parameter_swept_at_a_fixed_budget_gets_a_figure_and_one_derived_from_m_does_not():
    from experiments.reporting.report import swept_parameters

    def row(method: str, m: int, **params):
        return make_row(run_id=f"{method}-{m}-{params}", task="generate", method=method,
                        method_params={"m": m, **params}, m=m, dataset="aclsum", n_samples=4, model=MODEL,
                        rougeL=10.0 + sum(params.values()), decode_tok_s=20.0)  # fmt: skip

    rows = [row("h2o", 64, heavy_ratio=r) for r in (0.25, 0.5, 0.75)]
    rows += [row("kv_compression", m, recent=m // 4) for m in (32, 64, 128)]  # follows m: not a sweep
    frame = load_frame(".", rows)
    assert swept_parameters(frame) == [("h2o", "heavy_ratio")]
    figures, _ = build_figures(frame, ".")
    assert f"h2o_vs_heavy_ratio_aclsum_{MODEL}" in figures
    assert not any(stem.startswith("kv_compression_vs") for stem in figures)


def test_tables_show_intervals_and_bold_only_a_clear_winner(tmp_path):
    def row(method: str, rouge: float, ci: list[float]):
        return make_row(run_id=method, task="generate", method=method, method_params={"m": 64}, m=64,
                        dataset="aclsum", n_samples=64, model=MODEL, rougeL=rouge, rougeL_ci=ci,
                        bertscore_f1=50.0, bertscore_f1_ci=[45.0, 55.0])  # fmt: skip

    clear = [row("h2o", 30.0, [28.0, 32.0]), row("window", 20.0, [18.0, 22.0])]
    run_report({"results_dir": str(_results(tmp_path / "clear", clear)), "task": {"name": "report"}})
    markdown = (tmp_path / "clear" / "tables" / "generate_aclsum.md").read_text()
    assert "**30.00 ± 2.00**" in markdown and "| 20.00 ± 2.00 |" in markdown
    assert "**50.00" not in markdown  # equal BERTScore intervals: no winner
    assert r"\textbf{30.00 $\pm$ 2.00}" in (tmp_path / "clear" / "tables" / "generate_aclsum.tex").read_text()
    overlapping = [row("h2o", 30.0, [24.0, 36.0]), row("window", 28.0, [22.0, 34.0])]
    run_report({"results_dir": str(_results(tmp_path / "overlap", overlapping)), "task": {"name": "report"}})
    assert "**" not in (tmp_path / "overlap" / "tables" / "generate_aclsum.md").read_text()


def _results(folder: Path, rows: list[dict]) -> Path:
    for row in rows:
        append_row(folder, row)
    return folder


def test_streams_of_different_texts_or_lengths_never_share_a_line_or_a_curve(tmp_path):
    """One dataset, two texts, one of them also streamed shorter (an ablation), and a row written
    before rows named their stream: each (text, length, method) keeps its own table line and its own
    curve, in a panel per stream."""
    specs = (("hamlet", 64, "h2o", 40.0), ("hamlet", 64, "full", 30.0), ("lear", 64, "h2o", 50.0),
             ("lear", 64, "full", 35.0), ("hamlet", 32, "h2o", 38.0), (None, None, "h2o", 45.0))  # fmt: skip
    for text, tokens, method, ppl in specs:
        run_id = f"{text}-{tokens}-{method}"
        run_dir = tmp_path / "runs" / run_id
        run_dir.mkdir(parents=True)
        windows = [{"start": s, "tokens": 8, "perplexity": ppl + s} for s in range(0, tokens or 32, 8)]
        (run_dir / "windows.json").write_text(json.dumps(windows))
        named = {} if text is None else {"text": text, "context_length": tokens}
        m = None if method == "full" else 16
        append_row(tmp_path, make_row(run_id=run_id, task="stream", method=method, method_params={"m": m}, m=m,
                                      dataset="gutenberg", n_samples=1, model=MODEL, perplexity=ppl,
                                      run_dir=str(run_dir), **named))  # fmt: skip
    frame = load_frame(tmp_path)
    assert len(frame) == len(specs)  # the newest row of a configuration is kept per stream, not across them

    from experiments.reporting.report import write_tables

    write_tables(frame, tmp_path / "tables", tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "stream_gutenberg.csv").fillna({"text": "-", "context_length": 0})
    assert list(table.columns[:2]) == ["text", "method"] and "context_length" in table.columns
    lines = {(t, int(n), m): p for t, n, m, p in table[["text", "context_length", "method", "perplexity"]].values}
    assert lines == {(text or "-", tokens or 0, method): ppl for text, tokens, method, ppl in specs}
    windows = pd.read_csv(tmp_path / "tables" / "stream_windows_gutenberg.csv")
    first = windows[windows["start"] == 0].fillna({"text": "-", "context_length": 0})
    first = first.set_index(["text", "context_length", "method"])["perplexity"].to_dict()
    assert first == {(text or "-", tokens or 0, method): ppl for text, tokens, method, ppl in specs}

    figure = build_figures(frame, tmp_path)[0][f"stream_perplexity_gutenberg_{MODEL}"]
    panels = ["-", "hamlet, 32 tokens", "hamlet, 64 tokens", "lear, 64 tokens"]
    assert [axis.get_title() for axis in figure.axes] == panels
    for axis, (text, tokens) in zip(figure.axes, (("-", 0), ("hamlet", 32), ("hamlet", 64), ("lear", 64)), strict=True):
        starts = {line.get_label(): line.get_ydata()[0] for line in axis.get_lines()}
        assert starts == {method: ppl for t, n, method, ppl in specs if ((t or "-"), n or 0) == (text, tokens)}


def test_saved_figures_are_the_same_bytes_on_a_rerun(tmp_path):
    """A report rerun on the same rows rewrites its PDFs byte for byte (no creation date), so
    committed figures change only when their data does."""
    import time

    import matplotlib.pyplot as plt

    from experiments.reporting.report import save_figures

    figure, axis = plt.subplots()
    axis.plot([1, 2, 3], [3, 1, 2])
    first = save_figures({"f": figure}, tmp_path / "a")
    time.sleep(1.1)  # a creation date, if written, would now differ
    second = save_figures({"f": figure}, tmp_path / "b")
    plt.close(figure)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_speed_rows_under_another_wait_policy_are_kept_beside_each_other():
    """The same speed point measured under PASSIVE and ACTIVE is two measurements: both stay, while a
    rerun under the same policy replaces the older row."""
    from experiments.reporting.report import latest_rows

    def row(run_id: str, policy: str, tok_s: float) -> dict:
        return make_row(run_id=run_id, task="throughput", method="window", method_params={"m": 128}, m=128,
                        dataset="hamlet", n_samples=1, model="smollm2-135m", decode_tok_s=tok_s,
                        context_length=1024, batch_size=1, cpu_threads=2, omp_wait_policy=policy)  # fmt: skip

    rows = [row("a", "PASSIVE", 18.0), row("b", "ACTIVE", 28.0), row("c", "PASSIVE", 19.0)]
    kept = latest_rows(rows, task="throughput")
    assert sorted((r["omp_wait_policy"], r["decode_tok_s"]) for r in kept) == [("ACTIVE", 28.0), ("PASSIVE", 19.0)]
