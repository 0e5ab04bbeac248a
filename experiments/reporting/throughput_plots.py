"""Figures of a throughput run: tokens/s and memory against context, the packing result,
ADORE's overhead against window attention at the same budget, and each method's speedup over the
run's references with its interval. PNG and PDF, into the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adore.core.plotting import new_figure, save_figure


def method_label(row: dict[str, Any]) -> str:
    label = row["method"] + "".join(f" {k}={row[k]}" for k in ("m", "R") if row.get(k) is not None)
    slicing = (row.get("method_params") or {}).get("slicing")
    return label + (f" slicing={slicing}" if slicing not in (None, "gather") else "")


def _save(figure, folder: Path, stem: str) -> None:
    for suffix in ("png", "pdf"):
        save_figure(figure, folder / f"{stem}.{suffix}", dpi=130)


def plot_packing(packed: dict[str, Any], folder: Path, title: str) -> None:
    """Bars: decode tokens/s of each method at the largest batch its KV fits in the budget."""
    entries = [e for e in packed["methods"] if e.get("decode_tok_s")]
    if not entries:
        return
    figure, axis = new_figure(figsize=(6, 3.8))
    bars = axis.bar([e["method"] for e in entries], [e["decode_tok_s"] for e in entries], color="tab:blue")
    for bar, entry in zip(bars, entries, strict=True):
        axis.annotate(f"batch {entry['batch_size']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=8)  # fmt: skip
    gains = packed.get("gain_percent") or {}
    gain = f"; {next(iter(gains))}: {next(iter(gains.values())):+.0f}% over full" if gains else ""
    axis.set(ylabel="decode tokens/s", title=f"{title}\nKV budget {packed['kv_budget_mb']} MB, "
             f"context {packed['context_length']}{gain}")  # fmt: skip
    axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    _save(figure, folder, "packing")


def plot_profile(profiles: dict[str, dict[str, float]], folder: Path, title: str) -> None:
    """Stacked horizontal bars: milliseconds per decode step by part, one bar per method."""
    if not profiles:
        return
    figure, axis = new_figure(figsize=(7.5, 0.6 * len(profiles) + 1.8))
    labels = list(profiles)
    parts = [part for part in next(iter(profiles.values())) if part != "step"]
    left = [0.0] * len(labels)
    for part in parts:
        widths = [profiles[label][part] for label in labels]
        axis.barh(labels, widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axis.set(xlabel="milliseconds per decode step (cProfile)", title=title)
    axis.legend(fontsize=7, loc="lower right")
    _save(figure, folder, "step_profile")


def plot_speedups(entries: list[dict[str, Any]], folder: Path, title: str, stem: str = "speedups") -> None:
    """One panel per reference: each method's decode tok/s over it at every point, with its 95%
    interval (bars) and each round's own ratio (crosses); the line at 1 is the reference itself."""
    references = list(dict.fromkeys(e["reference"] for e in entries))
    if not references:
        return
    figure, axes = new_figure(cols=len(references), figsize=(5.2 * len(references), 3.8))
    for axis, reference in zip([axes] if len(references) == 1 else axes, references, strict=True):
        mine = [e for e in entries if e["reference"] == reference]
        points = sorted({(e["batch_size"], e["context_length"]) for e in mine})
        methods = list(dict.fromkeys(e["method"] for e in mine))
        for offset, method in enumerate(methods):
            shown = [e for e in mine if e["method"] == method]
            x = [points.index((e["batch_size"], e["context_length"])) + (offset - (len(methods) - 1) / 2) * 0.12
                 for e in shown]  # fmt: skip
            y = [e["ratio"] for e in shown]
            # Clamped: the bootstrap's sums and the point's mean may differ in the last bit.
            spans = [(max(0.0, e["ratio"] - e["ci"][0]), max(0.0, e["ci"][1] - e["ratio"])) if e["ci"] else (0.0, 0.0)
                     for e in shown]  # fmt: skip
            bars = axis.errorbar(x, y, yerr=list(zip(*spans, strict=True)), fmt="o", capsize=3, label=method)
            rounds = [(at, r) for at, e in zip(x, shown, strict=True) for r in e.get("per_round") or []]
            if rounds:  # each round's own ratio: the spread the interval over single steps does not show
                axis.scatter(*zip(*rounds, strict=True), marker="x", s=14, linewidths=0.8, color=bars[0].get_color())
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xticks(range(len(points)), [f"batch {b}\n{c}" for b, c in points], fontsize=8)
        axis.set(ylabel=f"decode tok/s over {reference}", title=f"{title}: over {reference}")
        axis.legend(fontsize=7)
    _save(figure, folder, stem)


def plot_all(rows: list[dict[str, Any]], packed: dict[str, Any] | None, profiles: dict[str, dict[str, float]],
             folder: Path, model: str, speedups: list[dict[str, Any]] | None = None,
             turn_speedups: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
    """Every figure of a throughput run; the curves against context are the report's own figures."""
    from experiments.reporting.report import against_context, load_frame, save_figures

    grid = [row for row in rows if row["task"] == "throughput"]
    frame = load_frame(folder, grid)
    dataset = grid[0]["dataset"] if grid else None
    figures = {
        "tok_s_vs_context": against_context(frame, dataset, model),
        "memory_vs_context": against_context(frame, dataset, model, "peak_mem_mb", title="Peak memory"),
        "kv_vs_context": against_context(frame, dataset, model, "kv_cache_mb", title="KV cache"),
        "adore_overhead": against_context(
            frame, dataset, model, methods={"adore", "window"}, title="ADORE against window attention"
        ),
    }
    save_figures({stem: figure for stem, figure in figures.items() if figure is not None}, folder)
    if packed:
        plot_packing(packed, folder, model)
    plot_profile(profiles, folder, f"{model}: where a decode step goes")
    plot_speedups(speedups or [], folder, model)  # over the rounds
    plot_speedups(turn_speedups or [], folder, f"{model}, interleaved turns", "speedups_turns")
