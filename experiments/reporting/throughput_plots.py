"""Figures of a throughput run: tokens/s and memory against context, the packing result, and
ADORE's overhead against window attention at the same budget. PNG and PDF, into the run folder."""

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


def plot_all(rows: list[dict[str, Any]], packed: dict[str, Any] | None, profiles: dict[str, dict[str, float]],
             folder: Path, model: str) -> None:  # fmt: skip
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
