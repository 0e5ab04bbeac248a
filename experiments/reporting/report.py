"""The ``report`` task: every result row -> tables and figures (``python run.py task=report``).

pandas reads ``<results_dir>/runs.jsonl``. A corrupt line is named by its number and skipped, with
a warning on stderr. Rows merged from several machines are deduplicated by ``run_id`` and ordered by
timestamp, and only the newest row of each configuration is kept (:func:`latest_rows`). The report
then writes::

    <results_dir>/table.md                                  every generate row in one table (also printed)
    <results_dir>/tables/<task>_<dataset>.md | .tex | .csv  method by metric at each m, per task and dataset
                                                           (stream tables: a line per text, length and method)
    <results_dir>/tables/main_<dataset>.md                 each quality metric as a method x m grid with
                                                           intervals (the README's main tables)
    <results_dir>/tables/stream_windows_<dataset>.csv      the stream runs' per-window perplexities (the
                                                           streaming figure's data, kept with the tables)
    <results_dir>/tables/paired_<dataset>.md | .tex | .csv         each generate run against full and the
                                                                   reference, per sample (paired.py)
    <results_dir>/tables/paired_stream_<dataset>.md | .tex | .csv  each stream run against them, per window
    <results_dir>/figures/<figure>_<dataset>_<model>.png | .pdf
        quality_vs_m           ROUGE-L, BERTScore-F1 (and accuracy) against the budget m, a line per method
        <method>_vs_<param>    a method's quality and decode tok/s against any swept parameter
                               (e.g. adore_vs_R), a line per m
        <method>_by_<param>    bars of a method's quality (and recall@m) per choice of a text
                               parameter (e.g. adore_by_scored_by), a group per m
        stream_perplexity      perplexity per window against position (each stream run's windows.json),
                               a panel per stream (text and length)
        throughput_vs_context  decode tok/s against context length, a line per method, a panel per batch size

The Markdown and LaTeX tables show two decimals and the CSV keeps full precision, with row keys as
its header. Any figure whose data is missing is skipped, with one line saying what it needs.
``notebooks/paper_figures.ipynb`` calls :func:`load_frame` and :func:`build_figures`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from adore import ConfigError
from adore.core.plotting import new_figure
from adore.methods import available_methods, method_class
from experiments.infra.results import CI_KEYS, RUNS_FILE, STREAMED_TEXT_KEY, THREAD_KEYS, read_rows
from experiments.infra.tasks import all_tasks, register_task
from experiments.reporting.paired import (
    paired_frame,
    paired_stream_frame,
    sample_scores,
    write_paired_stream_tables,
    write_paired_tables,
    write_sample_tables,
)
from experiments.stats import half_width

COLUMNS = (
    ("method", "method"), ("model", "model"), ("m", "m"), ("R", "R"), ("extra", "other parameters"),
    ("n_samples", "n"), ("rougeL", "ROUGE-L"), ("bertscore_f1", "BERTScore-F1"), ("bleu", "BLEU"),
    ("decode_tok_s", "decode tok/s"), ("kv_cache_mb", "KV MB"),
)  # fmt: skip
# Parameters shown in their own columns, or too long to be useful in a table.
_HIDDEN = {"m", "R", "controller_checkpoint", "controller_scorer", "chunk", "finetune", "recall_at_m"}
# Described values a method measured (not set): never a variant or a sweep, shown as their own panel.
DIAGNOSTICS = {"recall_at_m": "recall@m of the true top-K (held out)"}

# Column titles (tables) and axis labels with units (figures).
TITLES = {
    STREAMED_TEXT_KEY: "text", "method": "method", "model": "model", "m": "m", "R": "R", "params": "other parameters",
    "n_samples": "n",
    "rougeL": "ROUGE-L", "bertscore_f1": "BERTScore-F1", "bleu": "BLEU", "accuracy": "accuracy",
    "perplexity": "perplexity", "context_length": "context", "batch_size": "batch",
    "prefill_tok_s": "prefill tok/s", "decode_tok_s": "decode tok/s", "ms_per_token_p50": "ms/token p50",
    "peak_mem_mb": "peak MB", "kv_cache_mb": "KV MB", "kv_decode_mb": "decode KV MB",
    "omp_wait_policy": "OMP wait",
}  # fmt: skip
AXIS_LABELS = {
    "rougeL": "ROUGE-L F1 (0-100)", "bertscore_f1": "BERTScore-F1 (0-100)", "bleu": "BLEU (0-100)",
    "accuracy": "accuracy (%)", "decode_tok_s": "decode throughput (tokens/s)",
    "peak_mem_mb": "peak memory (MB; RSS on CPU, allocated on CUDA)", "kv_cache_mb": "KV cache (MB)",
    "kv_decode_mb": "KV cache while decoding (MB)",
}  # fmt: skip
IDENTITY = (STREAMED_TEXT_KEY, "method", "model", "m", "R", "params", "n_samples")
QUALITY = ("rougeL", "bertscore_f1", "accuracy")
# Metric columns of a task that declares none (its TaskSpec.metrics); columns without a value are left out.
OTHER_METRICS = ("accuracy", "rougeL", "bertscore_f1", "bleu", "perplexity", "prefill_tok_s", "decode_tok_s",
                 "ms_per_token_p50", "peak_mem_mb", "kv_cache_mb")  # fmt: skip
# One colour per method in every figure (variants of a method differ by marker and line style).
METHOD_COLORS = {
    "full": "black", "topk": "tab:gray", "window": "tab:blue", "streaming_llm": "tab:orange", "h2o": "tab:green",
    "kv_compression": "tab:red", "adore": "tab:purple", "hf_generate": "tab:brown", "knorm": "tab:olive",
    "tova": "tab:cyan", "snapkv": "tab:pink", "pyramidkv": "goldenrod", "adakv": "navy", "quest": "teal",
}  # fmt: skip
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# Parameters never used to tell series apart (checkpoint hashes; the adapter shows in the model name).
_LABEL_HIDDEN = {"controller_checkpoint", "controller_scorer", "chunk", "finetune", *DIAGNOSTICS}
_STYLES = ("-", "--", "-.", ":")
_REFERENCE_STYLES = {"-": "--", "--": ":", "-.": "-.", ":": (0, (1, 4))}  # horizontal reference lines


# ---------------------------------------------------------------------------------------------- rows


def latest_rows(rows: list[dict[str, Any]], task: str | None = "generate") -> list[dict[str, Any]]:
    """Keep the newest row of each (task, method, params, dataset, streamed text, model, n_samples,
    context, batch, CPU threads and wait policy), in first-seen order; ``task=None`` keeps every task.
    (A speed run under another OpenMP wait policy is another measurement, not a newer one.)"""
    latest: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if task and row.get("task") != task:
            continue
        key = (row.get("task"), row.get("method"), str(method_params(row)), row.get("dataset"),
               row.get(STREAMED_TEXT_KEY), row.get("model"), row.get("n_samples"), row.get("context_length"),
               row.get("batch_size"), *(row.get(k) for k in THREAD_KEYS))  # fmt: skip
        latest.pop(key, None)
        latest[key] = row
    return list(latest.values())


def _time(row: dict[str, Any]) -> float:
    try:
        return datetime.strptime(str(row.get("timestamp")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return float("-inf")  # no timestamp: keeps its place in the file, before timed rows


def merged_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    """All readable rows: corrupt lines skipped with a warning, one row per ``run_id`` (a file
    concatenated twice counts once), ordered by timestamp (rows merged from many nodes)."""
    by_id: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(read_rows(results_dir, on_error="warn")):
        key = str(row.get("run_id") or f"line {number}")
        by_id.pop(key, None)
        by_id[key] = row
    return sorted(by_id.values(), key=_time)


def method_params(row: dict[str, Any]) -> dict[str, Any]:
    """The row's method parameters, with the defaults of rows written before a parameter existed."""
    params = dict(row.get("method_params") or {})
    name = row.get("method")
    return method_class(name).row_params(params) if name in available_methods() else params


def extra_params(row: dict[str, Any]) -> str:
    """The method's other parameters, compactly (``K=32 labels_horizon=8``)."""
    params = method_params(row)
    shown = {k: v for k, v in params.items() if k not in _HIDDEN and v is not None}
    return " ".join(f"{k}={v}" for k, v in shown.items()) or "-"


def sort_key(row: dict[str, Any]) -> tuple:
    """Dataset, streamed text, model, then budget (full-cache methods last), then method, then R."""
    m = row.get("m")
    return (row.get("dataset") or "", row.get(STREAMED_TEXT_KEY) or "", row.get("model") or "", m is None, m or 0,
            row.get("method") or "", row.get("R") or 0, extra_params(row), row.get("batch_size") or 0, row.get("context_length") or 0)  # fmt: skip


def report_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    """The newest row of every configuration, all tasks, sorted by :func:`sort_key`."""
    return sorted(latest_rows(merged_rows(results_dir), task=None), key=sort_key)


def load_frame(results_dir: str | Path, rows: list[dict[str, Any]] | None = None):
    """The newest row of every configuration, all tasks, as a pandas DataFrame (``params`` added)."""
    import pandas as pd

    rows = report_rows(results_dir) if rows is None else rows
    frame = pd.DataFrame(rows)
    for key in ("task", "dataset", STREAMED_TEXT_KEY, "model", "method", "method_params", "m", "R", "n_samples",
                "run_id", "run_dir", *OTHER_METRICS, *CI_KEYS, "context_length", "batch_size"):  # fmt: skip
        if key not in frame:
            frame[key] = None
    frame["params"] = [extra_params(row) for row in rows]
    return frame


# -------------------------------------------------------------------------------------------- tables


def _cell(row: dict[str, Any], key: str) -> str:
    value = extra_params(row) if key == "extra" else row.get(key)
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float):
        spread = half_width(row.get(f"{key}_ci"))
        return f"{value:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row, key) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def _integral(series) -> Any:
    """Whole-number columns (m, R, n) as nullable integers, not ``64.0``."""
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce")
    if values.notna().any() and (values.dropna() % 1 == 0).all():
        return values.astype("Int64")
    return series


def task_metrics(task: str) -> tuple[str, ...]:
    """The metric columns a task declares (:class:`~experiments.infra.tasks.TaskSpec`), else the general ones;
    rows of a task that no longer exists keep the general columns."""
    known = {spec.name: spec.metrics for spec in all_tasks()}
    return known.get(task) or OTHER_METRICS


def table_frame(frame, task: str, dataset: str):
    """One task's rows on one dataset: identity columns, then the metrics that have a value (row keys
    as column names, full precision)."""
    rows = frame[(frame["task"] == task) & (frame["dataset"] == dataset)]
    metrics = [k for k in task_metrics(task) if k in rows and rows[k].notna().any()]
    identity = [k for k in IDENTITY if k != STREAMED_TEXT_KEY or rows[k].notna().any()]
    table = rows[[*identity, *metrics]].reset_index(drop=True).copy()
    for metric in metrics:  # the 95% interval beside its metric, as two numeric columns
        intervals = rows.get(f"{metric}_ci")
        if intervals is not None and intervals.notna().any():
            bounds = [ci if isinstance(ci, list | tuple) else (None, None) for ci in intervals]
            at = table.columns.get_loc(metric) + 1
            table.insert(at, f"{metric}_ci_lo", [b[0] for b in bounds])
            table.insert(at + 1, f"{metric}_ci_hi", [b[1] for b in bounds])
    for key in ("m", "R", "n_samples", "context_length", "batch_size"):
        if key in table:
            table[key] = _integral(table[key])
    return table


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "none"


def _text(value: Any) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, list | dict) and pd.isna(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _display(table):
    """Titles as headers; numbers with two decimals, '-' for missing, an interval as ``± half-width``
    after its value (Markdown and LaTeX). The best value of a quality metric is bold only when its
    interval does not overlap the next best's: overlapping intervals name no winner."""
    shown = table.drop(columns=[c for c in table.columns if c.endswith(("_ci_lo", "_ci_hi"))]).astype(object)
    shown = shown.map(_text)
    for metric in [c for c in table.columns if f"{c}_ci_lo" in table.columns]:
        lo, hi = table[f"{metric}_ci_lo"], table[f"{metric}_ci_hi"]
        for i in table.index:
            if lo[i] is not None and lo[i] == lo[i] and table.at[i, metric] == table.at[i, metric]:
                shown.at[i, metric] += f" ± {(hi[i] - lo[i]) / 2:.2f}"
        winner = clear_winner(table, metric)
        if winner is not None:
            shown.at[winner, metric] = f"**{shown.at[winner, metric]}**"
    return shown.rename(columns=TITLES)


def clear_winner(table, metric: str) -> Any:
    """The index of the row whose ``metric`` is best (highest; lowest for perplexity) when its
    interval lies clear of every other row's; ``None`` otherwise or without intervals."""
    if metric not in (*QUALITY, "bleu", "perplexity") or f"{metric}_ci_lo" not in table:
        return None
    rows = table[table[metric].notna() & table[f"{metric}_ci_lo"].notna()]
    if len(rows) < 2:
        return None
    lower_better = metric == "perplexity"
    best = rows[metric].astype(float).idxmin() if lower_better else rows[metric].astype(float).idxmax()
    others = rows.drop(index=best)
    if lower_better:
        clear = rows.at[best, f"{metric}_ci_hi"] < others[f"{metric}_ci_lo"].astype(float).min()
    else:
        clear = rows.at[best, f"{metric}_ci_lo"] > others[f"{metric}_ci_hi"].astype(float).max()
    return best if clear else None


def write_tables(frame, out_dir: str | Path, results_dir: str | Path | None = None) -> list[Path]:
    """``<task>_<dataset>.md``, ``.tex`` and ``.csv`` for every task and dataset with rows, and
    ``stream_windows_<dataset>.csv``: the per-window perplexities of the stream runs, which the
    streaming figure falls back to where the run folders are gone."""
    import pandas as pd

    out = Path(out_dir)
    results_dir = out.parent if results_dir is None else Path(results_dir)
    written: list[Path] = []
    if frame.empty:
        return written
    out.mkdir(parents=True, exist_ok=True)
    for (task, dataset), _ in frame.groupby(["task", "dataset"], sort=True, dropna=False):
        table = table_frame(frame, task, dataset)
        stem = out / f"{_slug(task)}_{_slug(dataset)}"
        table.to_csv(stem.with_suffix(".csv"), index=False)
        shown = _display(table)
        markdown = markdown_table(shown.to_dict("records"), tuple((c, c) for c in shown.columns))
        stem.with_suffix(".md").write_text(markdown + "\n")
        shown_keys = [key for key in table.columns if not key.endswith(("_ci_lo", "_ci_hi"))]
        latex = (
            shown.style.hide(axis="index")
            .format(escape="latex")
            .format_index(escape="latex", axis=1)
            .to_latex(
                hrules=True,
                column_format="".join("l" if key in IDENTITY else "r" for key in shown_keys),
                caption=f"{task} results on {dataset}".replace("_", r"\_"),
                position="htbp",
            )
        )
        latex = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", latex).replace(" ± ", r" $\pm$ ")
        stem.with_suffix(".tex").write_text(latex)
        written += [stem.with_suffix(suffix) for suffix in (".md", ".tex", ".csv")]
    for dataset, rows in frame[frame["task"] == "stream"].groupby("dataset", sort=True):
        curves = [(row, _windows(row, results_dir)) for _, row in rows.iterrows()]
        keys = ("run_id", STREAMED_TEXT_KEY, "context_length", "method", "model", "m", "params")
        records = [{**{k: row[k] for k in keys}, **window}
                   for row, windows in curves for window in windows or []]  # fmt: skip
        if records:
            path = _windows_table(results_dir, dataset)
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(records).to_csv(path, index=False)
            written.append(path)
    return written


def main_table(frame, dataset: str, model: str, metric: str) -> str | None:
    """``metric`` of every generate configuration of ``model`` on ``dataset`` as a grid: a line per
    method (and variant), a column per budget m, and one for the methods that keep every token; each
    cell is ``value [lo, hi]`` (the 95% interval). ``None`` when no row has the metric."""
    rows = frame[(frame["task"] == "generate") & (frame["dataset"] == dataset) & (frame["model"] == model)
                 & frame[metric].notna()]  # fmt: skip
    if rows.empty:
        return None
    labels = _variant_labels(rows, axis=("m",))
    budgets = sorted({int(m) for m in rows["m"].dropna()})
    columns = [*budgets, None] if rows["m"].isna().any() else budgets
    cells: dict[str, dict[Any, str]] = {}
    for index, row in rows.iterrows():
        ci = row.get(f"{metric}_ci")
        interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if isinstance(ci, list | tuple) else ""
        m = None if row["m"] != row["m"] or row["m"] is None else int(row["m"])
        cells.setdefault(labels[index], {})[m] = f"{row[metric]:.2f}{interval}"
    counts = sorted({int(n) for n in rows["n_samples"].dropna()})
    header = ["method", *(f"m={m}" if m is not None else "no eviction" for m in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join([label, *(cells[label].get(m, "") for m in columns)]) + " |"
              for label in _series(labels, rows)]  # fmt: skip
    with_ci = rows.get(f"{metric}_ci")
    intervals = ", 95% bootstrap intervals" if with_ci is not None and with_ci.notna().any() else ""
    note = f"{TITLES.get(metric, metric)} on {dataset}, {model}, n={'/'.join(map(str, counts))}{intervals}"
    return f"{note}\n\n" + "\n".join(lines)


def write_main_tables(frame, out_dir: str | Path) -> list[Path]:
    """``main_<dataset>.md``: :func:`main_table` of each quality metric the dataset's rows have, a
    table per model (the base model first, then each adapter), so that the base and the fine-tuned
    views sit one above the other and never share a cell."""
    written = []
    if frame.empty:
        return written
    generate = frame[frame["task"] == "generate"]
    generate = generate.assign(model=generate["model"].fillna("-"))  # a row without a model still shows
    for dataset in sorted(generate["dataset"].dropna().unique()):
        models = sorted(generate.loc[generate["dataset"] == dataset, "model"].unique())
        parts = [table for metric in QUALITY for model in models
                 if (table := main_table(generate, dataset, model, metric)) is not None]  # fmt: skip
        if parts:
            path = Path(out_dir) / f"main_{_slug(dataset)}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n".join(parts) + "\n")
            written.append(path)
    return written


# ------------------------------------------------------------------------------------------- figures


def _variant_labels(rows, axis: tuple[str, ...]) -> dict[Any, str]:
    """A legend label per row: the method, plus what tells apart that method's rows at the same
    point of the ``axis`` columns (parameters, sample count). A parameter that only follows the axis
    (Scissorhands' ``recent = m // 4`` against m) is not a variant, nor are the checkpoint hashes."""
    labels: dict[Any, str] = {}
    for method, group in rows.groupby("method", sort=False):
        records = group.to_dict("records")
        policies = [r.get("omp_wait_policy") for r in records]  # speed rows: a run under each policy
        params = [
            {**{k: v for k, v in method_params(r).items() if k not in _LABEL_HIDDEN and k not in axis},
             "n": r.get("n_samples"), "omp": policy if isinstance(policy, str) else None}
            for r, policy in zip(records, policies, strict=True)
        ]  # fmt: skip
        buckets: dict[str, list[dict[str, Any]]] = {}
        for record, p in zip(records, params, strict=True):
            buckets.setdefault(json.dumps([record.get(k) for k in axis], default=str), []).append(p)
        keys = sorted({k for p in params for k in p})
        varying = [
            k for k in keys if any(len({json.dumps(p.get(k), default=str) for p in b}) > 1 for b in buckets.values())
        ]
        for index, p in zip(group.index, params, strict=True):
            labels[index] = str(method) + "".join(f" {k}={p[k]}" for k in varying if p.get(k) is not None)
    return labels


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _series(labels: dict[Any, str], rows) -> list[str]:
    """Each label once, in the legend's order: by method (as in METHOD_COLORS), then naturally (R=2 < R=10)."""
    rank = {method: i for i, method in enumerate(METHOD_COLORS)}
    methods = {labels[i]: rows.at[i, "method"] for i in rows.index}
    return sorted(methods, key=lambda label: (rank.get(methods[label], len(rank)), _natural(label)))


def _styles(labels: dict[Any, str], rows) -> dict[str, dict[str, Any]]:
    """Colour by method (and its first marker, so that a dozen methods stay apart in grey print too);
    marker and line style move on by variant within the method."""
    styles: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    rank = {method: i for i, method in enumerate(METHOD_COLORS)}
    for label in _series(labels, rows):
        method = next(rows.at[i, "method"] for i in rows.index if labels[i] == label)
        i = seen[method] = seen.get(method, -1) + 1
        marker = _MARKERS[(rank.get(method, 0) + i) % len(_MARKERS)]
        styles[label] = {"color": METHOD_COLORS.get(method), "marker": marker, "linestyle": _STYLES[i % len(_STYLES)]}
    return styles


def _plot_series(axis, rows, labels: dict[Any, str], styles: dict[str, dict[str, Any]], x: str, y: str) -> None:
    """One line per series of ``rows``: ``y`` against ``x``, points without a ``y`` left out, and the
    95% interval as a band where the rows carry ``<y>_ci``."""
    for label in _series(labels, rows):
        points = rows[[labels[i] == label for i in rows.index]].sort_values(x)
        points = points[points[y].notna()]
        if points.empty:
            continue
        axis.plot(points[x], points[y], label=label, **styles[label])
        intervals = points.get(f"{y}_ci")
        if intervals is not None and all(isinstance(ci, list | tuple) for ci in intervals):
            lo, hi = zip(*intervals, strict=True)
            axis.fill_between(points[x], lo, hi, color=styles[label]["color"], alpha=0.12, linewidth=0)


def _new_figure(panels: int, entries: int, width: float = 4.6, height: float = 3.6):
    """A row of ``panels`` axes, tall enough for a legend of ``entries`` lines on the right."""
    figure, axes = new_figure(1, panels, figsize=(width * panels + 2.4, max(height, 0.2 * entries + 1.2)))
    return figure, axes if isinstance(axes, list) else [axes]


def _log2_axis(axis, values) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ticks = sorted({int(v) for v in values})
    axis.set_xscale("log", base=2)
    axis.set_xticks(ticks)
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.xaxis.set_minor_formatter(NullFormatter())


def _legend(figure, axes) -> None:
    handles: dict[str, Any] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)


def _sample_note(rows) -> str:
    counts = sorted({int(n) for n in rows["n_samples"].dropna()})
    return f", n={counts[0]}" if len(counts) == 1 else ""


def quality_vs_m(frame, dataset: str, model: str):
    """Quality against the cache budget m, a line per method; methods that keep every token
    (``full``, ``topk``) as dashed horizontal references. ``None`` without rows at a budget."""
    rows = frame[(frame["task"] == "generate") & (frame["dataset"] == dataset) & (frame["model"] == model)]
    budgeted = rows[rows["m"].notna()]
    metrics = [k for k in QUALITY if rows[k].notna().any()]
    if budgeted.empty or not metrics:
        return None
    labels = _variant_labels(rows, axis=("m",))
    styles = _styles(labels, rows)
    figure, axes = _new_figure(len(metrics), len(set(labels.values())))
    for axis, metric in zip(axes, metrics, strict=True):
        _plot_series(axis, budgeted, labels, styles, "m", metric)
        for index, row in rows[rows["m"].isna()].iterrows():
            if row[metric] == row[metric] and row[metric] is not None:
                style = styles[labels[index]]
                axis.axhline(row[metric], color=style["color"], linestyle=_REFERENCE_STYLES[style["linestyle"]],
                             linewidth=1.2, label=f"{labels[index]} (no eviction)")  # fmt: skip
        _log2_axis(axis, budgeted["m"])
        axis.set(xlabel="cache budget m (tokens)", ylabel=AXIS_LABELS[metric])
        axis.grid(alpha=0.3)
    figure.suptitle(f"Quality against cache budget: {model} on {dataset}{_sample_note(rows)}")
    _legend(figure, axes)
    return figure


def swept_parameters(rows, categorical: bool = False) -> list[tuple[str, str]]:
    """``(method, parameter)`` for every method parameter other than ``m`` that takes two or more
    values among one method's rows at the same budget: numeric ones (ADORE's ``R``, H2O's
    ``heavy_ratio``; not a parameter derived from m, such as Scissorhands' ``recent = m // 4``), or
    with ``categorical`` the text-valued ones (what scores ADORE's tokens). Measured values
    (:data:`DIAGNOSTICS`) are no parameters."""
    swept = []
    for method, group in rows.groupby("method", sort=True):
        values: dict[tuple[str, Any], set] = {}
        for record in group.to_dict("records"):
            params = method_params(record)
            for key, value in params.items():
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                kept = isinstance(value, str) if categorical else numeric
                if key != "m" and key not in _LABEL_HIDDEN and kept:
                    values.setdefault((key, params.get("m")), set()).add(value)
        keys = {key for (key, _), seen in values.items() if len(seen) >= 2}
        swept += [(str(method), key) for key in sorted(keys)]
    return swept


def quality_vs_parameters(frame, dataset: str, model: str) -> dict[str, Any]:
    """For every swept method parameter (:func:`swept_parameters`): that method's quality and decode
    throughput against the parameter, a line per budget m. ``{"<method>_vs_<parameter>": Figure}``."""
    rows = frame[(frame["task"] == "generate") & (frame["dataset"] == dataset) & (frame["model"] == model)]
    figures = {}
    for method, parameter in swept_parameters(rows):
        own = rows[rows["method"] == method].copy()
        own[parameter] = [method_params(record).get(parameter) for record in own.to_dict("records")]
        own = own[own[parameter].notna()]
        metrics = [k for k in (*QUALITY, "decode_tok_s") if own[k].notna().any()]
        if not metrics:
            continue
        labels = _variant_labels(own, axis=(parameter,))
        styles = _styles(labels, own)
        figure, axes = _new_figure(len(metrics), len(set(labels.values())))
        values = sorted(set(own[parameter]))
        for axis, metric in zip(axes, metrics, strict=True):
            _plot_series(axis, own, labels, styles, parameter, metric)
            if all(float(v).is_integer() for v in values) and len(values) <= 12:
                axis.set_xticks(values)
            axis.set(xlabel=f"method.{parameter}", ylabel=AXIS_LABELS[metric])
            axis.grid(alpha=0.3)
        figure.suptitle(f"{method} against {parameter}: {model} on {dataset}{_sample_note(own)}")
        _legend(figure, axes)
        figures[f"{method}_vs_{parameter}"] = figure
    return figures


def _comparable(rows, parameter: str):
    """The rows of ``rows`` that differ only in ``parameter`` (and the budget m), or ``None`` when the
    choices cannot be compared. A parameter with one value per choice follows the choice (ADORE's
    ``scorer`` beside ``scored_by``) and is ignored; one that varies within a choice (``R``) is held
    at the value every choice that has it shares (the most frequent one); when the choices share none,
    the comparison is confounded."""
    params = [{k: v for k, v in method_params(r).items() if k not in _LABEL_HIDDEN and k not in ("m", parameter)}
              for r in rows.to_dict("records")]  # fmt: skip
    choices = list(rows[parameter])
    keep = [True] * len(params)
    for key in sorted({k for p in params for k in p}):
        by_choice: dict[Any, list[str]] = {}
        for choice, p in zip(choices, params, strict=True):
            if key in p:
                by_choice.setdefault(choice, []).append(json.dumps(p[key], default=str))
        if all(len(set(values)) == 1 for values in by_choice.values()):
            continue  # follows the choice
        common = set.intersection(*(set(values) for values in by_choice.values()))
        if not common:
            return None
        held = max(sorted(common), key=lambda v: sum(values.count(v) for values in by_choice.values()))
        keep = [
            k and (key not in p or json.dumps(p[key], default=str) == held) for k, p in zip(keep, params, strict=True)
        ]
    return rows[keep]


def quality_by_choices(frame, dataset: str, model: str) -> dict[str, Any]:
    """For every text-valued parameter a method's rows sweep (``swept_parameters(categorical=True)``):
    bars of its quality per choice (95% intervals as error bars), a group per budget m, and a panel
    per measured diagnostic the rows carry (recall@m). ``{"<method>_by_<parameter>": Figure}``."""
    rows = frame[(frame["task"] == "generate") & (frame["dataset"] == dataset) & (frame["model"] == model)]
    figures = {}
    for method, parameter in swept_parameters(rows, categorical=True):
        own = rows[rows["method"] == method].copy()
        records = own.to_dict("records")
        own[parameter] = [method_params(r).get(parameter) for r in records]
        for key in DIAGNOSTICS:
            own[key] = [method_params(r).get(key) for r in records]
        own = own[own[parameter].notna()]
        own = _comparable(own, parameter)
        if own is None:
            continue
        panels = [k for k in (*QUALITY, *DIAGNOSTICS, "decode_tok_s") if own[k].notna().any()]
        choices = sorted(set(own[parameter]), key=_natural)
        budgets = sorted(own["m"].dropna().unique()) or [None]
        figure, axes = _new_figure(len(panels), len(choices))
        width = 0.8 / len(choices)
        for axis, metric in zip(axes, panels, strict=True):
            for c, choice in enumerate(choices):
                heights, errors = [], [[], []]
                for m in budgets:
                    point = own[(own[parameter] == choice) & ((own["m"] == m) if m is not None else own["m"].isna())]
                    value = point[metric].iloc[-1] if not point.empty else float("nan")
                    ci = point[f"{metric}_ci"].iloc[-1] if f"{metric}_ci" in point and not point.empty else None
                    heights.append(value)
                    low, high = (value - ci[0], ci[1] - value) if isinstance(ci, list | tuple) else (0.0, 0.0)
                    errors[0].append(low)
                    errors[1].append(high)
                axis.bar([b + c * width for b in range(len(budgets))], heights, width, yerr=errors, capsize=3,
                         label=f"{parameter}={choice}", color=f"C{c}")  # fmt: skip
            axis.set_xticks([b + width * (len(choices) - 1) / 2 for b in range(len(budgets))])
            axis.set_xticklabels([f"m={int(m)}" if m is not None else "-" for m in budgets])
            axis.set(ylabel=AXIS_LABELS.get(metric) or DIAGNOSTICS.get(metric, metric))
            axis.grid(alpha=0.3, axis="y")
        figure.suptitle(f"{method} by {parameter}: {model} on {dataset}{_sample_note(own)}")
        _legend(figure, axes)
        figures[f"{method}_by_{parameter}"] = figure
    return figures


def _windows_table(results_dir: Path, dataset: Any) -> Path:
    return results_dir / "tables" / f"stream_windows_{_slug(dataset)}.csv"


def _windows(row, results_dir: Path) -> list[dict[str, float]] | None:
    """A stream run's per-window perplexities: ``<run_dir>/windows.json``, else the same run under
    ``<results_dir>/runs/`` (results moved or merged from another machine), else the copy the
    report keeps in ``tables/stream_windows_<dataset>.csv`` (run folders are not committed)."""
    run_dir = row.get("run_dir")
    candidates = [Path(run_dir) / "windows.json"] if isinstance(run_dir, str) and run_dir else []
    candidates.append(results_dir / "runs" / str(row.get("run_id")) / "windows.json")
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                return None
    table = _windows_table(results_dir, row.get("dataset"))
    if table.is_file():
        import pandas as pd

        saved = pd.read_csv(table)
        mine = saved[saved["run_id"] == row.get("run_id")]
        if not mine.empty:
            return mine[["start", "tokens", "perplexity"]].to_dict("records")
    return None


def stream_perplexity(frame, dataset: str, model: str, results_dir: str | Path):
    """Perplexity per window against position in the stream, a line per method and a panel per
    stream (text and length: a 4,096-token ablation of a text is not the 9,216-token reference run
    of it), from each run's ``windows.json``. ``None`` when no stream run of this dataset has one."""
    rows = frame[(frame["task"] == "stream") & (frame["dataset"] == dataset) & (frame["model"] == model)]
    curves = [(index, _windows(row, Path(results_dir))) for index, row in rows.iterrows()]
    curves = [(index, windows) for index, windows in curves if windows]
    if not curves:
        return None
    streams = sorted({_stream(rows.loc[index]) for index, _ in curves})
    labels = _variant_labels(rows, axis=(STREAMED_TEXT_KEY, "context_length"))
    styles = _styles(labels, rows)
    figure, axes = _new_figure(len(streams), len(set(labels.values())), width=6.4, height=3.8)
    order = _series(labels, rows)
    for axis, stream in zip(axes, streams, strict=True):
        mine = [curve for curve in curves if _stream(rows.loc[curve[0]]) == stream]
        for index, windows in sorted(mine, key=lambda curve: order.index(labels[curve[0]])):
            label = labels[index]
            axis.plot([w["start"] + w["tokens"] / 2 for w in windows], [w["perplexity"] for w in windows],
                      label=label, **styles[label])  # fmt: skip
        size = int(mine[0][1][0]["tokens"])
        axis.set(xlabel="position in the stream (tokens)", ylabel=f"perplexity per {size}-token window",
                 yscale="log", title=None if len(streams) == 1 else _stream_title(stream))  # fmt: skip
        axis.grid(alpha=0.3, which="both")
    named = len(streams) == 1 and streams[0] != ("-", 0)
    figure.suptitle(
        f"Streaming perplexity: {model} on {dataset}" + (f" ({_stream_title(streams[0])})" if named else "")
    )
    _legend(figure, axes)
    return figure


def _stream(row) -> tuple[str, int]:
    """(text, tokens) of a stream row; ``-`` and 0 for rows written before rows carried them."""
    text, tokens = row.get(STREAMED_TEXT_KEY), row.get("context_length")
    return (text if isinstance(text, str) else "-", int(tokens) if tokens == tokens and tokens is not None else 0)


def _stream_title(stream: tuple[str, int]) -> str:
    text, tokens = stream
    return f"{text}, {tokens:,} tokens" if tokens else text


def against_context(frame, dataset: str, model: str, value: str = "decode_tok_s", methods: set[str] | None = None,
                    title: str = "Decode throughput"):  # fmt: skip
    """``value`` against context length, a line per method, a panel per batch size (``task=throughput``
    rows; ``methods`` keeps only those). ``None`` without such rows."""
    rows = frame[(frame["task"] == "throughput") & (frame["dataset"] == dataset) & (frame["model"] == model)
                 & frame["context_length"].notna() & frame[value].notna()]  # fmt: skip
    if methods is not None:
        rows = rows[rows["method"].isin(methods)]
    if rows.empty:
        return None
    labels = _variant_labels(rows, axis=("context_length", "batch_size"))
    styles = _styles(labels, rows)
    batches = sorted({int(b) for b in rows["batch_size"].dropna()}) or [None]
    figure, axes = _new_figure(len(batches), len(set(labels.values())))
    for axis, batch in zip(axes, batches, strict=True):
        panel = rows if batch is None else rows[rows["batch_size"] == batch]
        _plot_series(axis, panel, labels, styles, "context_length", value)
        _log2_axis(axis, rows["context_length"])
        axis.set(xlabel="context length (tokens)", ylabel=AXIS_LABELS[value],
                 title=f"batch size {batch}" if batch is not None else None)  # fmt: skip
        axis.grid(alpha=0.3)
    figure.suptitle(f"{title} against context length: {model} on {dataset}")
    _legend(figure, axes)
    return figure


def throughput_vs_context(frame, dataset: str, model: str):
    """Decode tokens/s against context length (see :func:`against_context`)."""
    return against_context(frame, dataset, model)


# What each figure needs, said when none could be drawn.
NEEDS = {
    "quality_vs_m": "generate rows at a cache budget m (e.g. python run.py -m +experiment=sweep_m)",
    "parameter_sweeps": "generate rows of one method at two or more values of a parameter other than m "
    "(python run.py -m method=adore method.R=0,4,8)",
    "parameter_choices": "generate rows of one method at two or more values of a text parameter "
    "(python run.py -m +experiment=ablation_controller)",
    "stream_perplexity": "stream rows with their windows.json (python run.py -m +experiment=paper_stream)",
    "throughput_vs_context": "task=throughput rows (python run.py task=throughput)",
}


def build_figures(frame, results_dir: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Every figure the rows allow: ``({file stem: matplotlib Figure}, [one line per figure skipped])``."""
    figures: dict[str, Any] = {}
    makers = {
        "quality_vs_m": ("generate", quality_vs_m),
        "parameter_sweeps": ("generate", quality_vs_parameters),
        "parameter_choices": ("generate", quality_by_choices),
        "stream_perplexity": ("stream", lambda f, d, m: stream_perplexity(f, d, m, results_dir)),
        "throughput_vs_context": ("throughput", throughput_vs_context),
    }
    skipped = []
    for name, (task, make) in makers.items():
        pairs = [] if frame.empty else frame[frame["task"] == task][["dataset", "model"]].drop_duplicates()
        made = 0
        for dataset, model in [] if len(pairs) == 0 else pairs.itertuples(index=False):
            made_here = make(frame, dataset, model)
            # A maker returns one figure (named after it) or several, named by what they show.
            named = made_here if isinstance(made_here, dict) else {name: made_here}
            for stem, figure in named.items():
                if figure is not None:
                    figures[f"{stem}_{_slug(dataset)}_{_slug(model)}"] = figure
                    made += 1
        if not made:
            skipped.append(f"figure {name} skipped: needs {NEEDS[name]}")
    return figures, skipped


def save_figures(figures: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Each figure as ``<stem>.png`` (150 dpi) and ``<stem>.pdf``. The PDF carries no creation date,
    so the same rows give the same bytes and a rerun of the report adds no churn to the history."""
    out = Path(out_dir)
    written: list[Path] = []
    for stem, figure in figures.items():
        out.mkdir(parents=True, exist_ok=True)
        for suffix, options in ((".png", {"dpi": 150}), (".pdf", {"metadata": {"CreationDate": None}})):
            figure.savefig(out / f"{stem}{suffix}", **options)
            written.append(out / f"{stem}{suffix}")
    return written


# -------------------------------------------------------------------------------------------- task


@register_task("report", uses_model=False)  # prints its own table
def run_report(cfg: dict[str, Any]) -> str:
    reference = (cfg.get("task") or {}).get("reference") or "h2o"
    if reference not in available_methods():
        choices = ", ".join(available_methods())
        raise ConfigError(f"task.reference={reference!r} is not a method; choose one of: {choices}")
    results_dir = Path(cfg["results_dir"])
    rows = report_rows(results_dir)
    frame = load_frame(results_dir, rows)
    generate = [row for row in rows if row.get("task") == "generate"]
    if not rows:
        table = f"no rows in {results_dir / RUNS_FILE} yet; run `python run.py method=full` first"
        print(table)
        return table
    if generate:
        columns = COLUMNS + (
            (("accuracy", "accuracy"),) if any(r.get("accuracy") is not None for r in generate) else ()
        )
        table = markdown_table(generate, columns)
        (results_dir / "table.md").write_text(table + "\n")
    else:
        table = f"no generation rows in {results_dir / RUNS_FILE}; tables per task in {results_dir / 'tables'}"
    print(table)
    tables = write_tables(frame, results_dir / "tables", results_dir)
    tables += write_main_tables(frame, results_dir / "tables")
    scores = sample_scores(frame, results_dir)
    tables += write_sample_tables(scores, results_dir)
    tables += write_paired_tables(paired_frame(frame, scores, reference), results_dir / "tables")
    streams = frame[frame["task"] == "stream"] if not frame.empty else frame
    windows = {row["run_id"]: _windows(row, results_dir) for _, row in streams.iterrows()}
    tables += write_paired_stream_tables(paired_stream_frame(frame, windows, reference), results_dir / "tables")
    figures, skipped = build_figures(frame, results_dir)
    saved = save_figures(figures, results_dir / "figures")
    print(
        f"\n{len(tables)} table files in {results_dir / 'tables'}/, {len(saved)} figure files in {results_dir / 'figures'}/"
    )
    for line in skipped:
        print(line)
    return table
