"""Figures of a throughput run: tokens/s and memory against context, the packing result, and
ADORE's overhead against window attention at the same budget. PNG and PDF, into the run folder."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_label(row: dict[str, Any]) -> str:
    label = row["method"] + "".join(f" {k}={row[k]}" for k in ("m", "R") if row.get(k) is not None)
    slicing = (row.get("method_params") or {}).get("slicing")
    return label + (f" slicing={slicing}" if slicing not in (None, "gather") else "")


def _save(figure, folder: Path, stem: str) -> None:
    figure.tight_layout()
    for suffix in ("png", "pdf"):
        figure.savefig(folder / f"{stem}.{suffix}", dpi=130)
    _pyplot().close(figure)


def plot_against_context(rows: list[dict[str, Any]], key: str, ylabel: str, folder: Path, stem: str,
                         title: str, methods: set[str] | None = None) -> None:  # fmt: skip
    """One panel per batch size; one line per method: ``key`` against context length."""
    plt = _pyplot()
    rows = [r for r in rows if r["task"] == "throughput" and (methods is None or r["method"] in methods)]
    batches = sorted({r["batch_size"] for r in rows})
    if not batches:
        return
    figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.8), squeeze=False)
    for axis, batch in zip(axes[0], batches, strict=True):
        lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in rows:
            if row["batch_size"] == batch and row.get(key) is not None:
                lines[method_label(row)].append((row["context_length"], row[key]))
        for label, points in lines.items():
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axis.set(xscale="log", xlabel="context length (tokens)", ylabel=ylabel, title=f"{title}, batch {batch}")
        axis.set_xticks(sorted({r["context_length"] for r in rows}))
        axis.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _save(figure, folder, stem)


def plot_packing(packed: dict[str, Any], folder: Path, title: str) -> None:
    """Bars: decode tokens/s of each method at the largest batch its KV fits in the budget."""
    entries = [e for e in packed["methods"] if e.get("decode_tok_s")]
    if not entries:
        return
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.8))
    bars = axis.bar([e["method"] for e in entries], [e["decode_tok_s"] for e in entries], color="tab:blue")
    for bar, entry in zip(bars, entries, strict=True):
        axis.annotate(f"batch {entry['batch_size']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=8)  # fmt: skip
    gain = f"; ADORE {packed['gain_percent']:+.0f}% over full" if "gain_percent" in packed else ""
    axis.set(ylabel="decode tokens/s", title=f"{title}\nKV budget {packed['kv_budget_mb']} MB, "
             f"context {packed['context_length']}{gain}")  # fmt: skip
    axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    _save(figure, folder, "packing")


def plot_profile(profiles: dict[str, dict[str, float]], folder: Path, title: str) -> None:
    """Stacked horizontal bars: milliseconds per decode step by part, one bar per method."""
    if not profiles:
        return
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 0.6 * len(profiles) + 1.8))
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
    plot_against_context(rows, "decode_tok_s", "decode tokens/s", folder, "tok_s_vs_context", model)
    plot_against_context(rows, "peak_mem_mb", "peak memory (MB)", folder, "memory_vs_context", model)
    plot_against_context(rows, "kv_cache_mb", "KV cache (MB)", folder, "kv_vs_context", model)
    plot_against_context(rows, "decode_tok_s", "decode tokens/s", folder, "adore_overhead",
                         f"{model}: ADORE vs window", methods={"adore", "window"})  # fmt: skip
    if packed:
        plot_packing(packed, folder, model)
    plot_profile(profiles, folder, f"{model}: where a decode step goes")
