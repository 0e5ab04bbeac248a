"""Paired comparisons for ``task=report``: each method against ``full`` and against a reference method
(``task.reference``, default ``h2o``) on the same samples.

Two methods run on the same prompts make paired data: the per-sample difference removes what the
samples share (a hard paper is hard for every method), so a paired test separates methods that
unpaired intervals cannot. For every generate row, per metric, the report writes the mean
difference, its 95% bootstrap interval, a sign-flip permutation p-value and the smallest difference
the run could detect (80% power), from the per-sample scores in each run's ``predictions.jsonl``.

Run folders are not committed, so the per-sample scores are also kept in
``tables/samples_<dataset>.csv``; the report reads them from there when a run folder is gone.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from experiments.infra.results import STREAMED_TEXT_KEY
from experiments.scoring import SAMPLE_METRICS
from experiments.stats import paired_block_comparison, paired_comparison

#: Per-sample metrics compared, where both runs have them.
PAIRED_METRICS = ("rougeL", "bertscore_f1", "exact_match")
_KEYS = ("run_id", "dataset", "model", "method", "params", "m")
# Stream comparisons resample runs of consecutive windows spanning about this many tokens: an
# evicting cache carries its state across windows, so single windows are not independent.
STREAM_BLOCK_TOKENS = 1024


def _slug(text: Any) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "none"


def samples_table(results_dir: Path, dataset: Any) -> Path:
    return results_dir / "tables" / f"samples_{_slug(dataset)}.csv"


def _from_run_folder(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    path = Path(str(row.get("run_dir") or "")) / "predictions.jsonl"
    if not path.is_file():
        return None
    records = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "scores" not in record:
            return None  # a run from before per-sample scores
        records.append({"sample_id": str(record["id"]), **record["scores"]})
    return records


def sample_scores(frame, results_dir: str | Path):
    """Per-sample scores of every generate row in ``frame``: one row per (run, sample), with the
    run's identity (:data:`_KEYS`) and :data:`~experiments.scoring.SAMPLE_METRICS`. From the run
    folders, else from the committed ``tables/samples_<dataset>.csv``."""
    import pandas as pd

    results_dir = Path(results_dir)
    rows = frame[frame["task"] == "generate"] if not frame.empty else frame
    kept: dict[Any, Any] = {}
    records = []
    for _, row in rows.iterrows():
        found = _from_run_folder(row)
        if found is None:
            dataset = row["dataset"]
            if dataset not in kept:
                path = samples_table(results_dir, dataset)
                kept[dataset] = pd.read_csv(path, dtype={"sample_id": str}) if path.is_file() else None
            table = kept[dataset]
            if table is None:
                continue
            found = table[table["run_id"] == row["run_id"]].drop(columns=list(_KEYS), errors="ignore")
            found = found.to_dict("records")
        records += [{**{key: row[key] for key in _KEYS}, **record} for record in found]
    columns = [*_KEYS, "sample_id", *SAMPLE_METRICS]
    return pd.DataFrame(records, columns=columns) if records else pd.DataFrame(columns=columns)


def write_sample_tables(scores, results_dir: str | Path) -> list[Path]:
    """``tables/samples_<dataset>.csv`` for every dataset with per-sample scores."""
    written = []
    for dataset, group in scores.groupby("dataset", sort=True):
        path = samples_table(Path(results_dir), dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        group.to_csv(path, index=False)
        written.append(path)
    return written


def _best_partner(candidates, scores, run_id: str):
    """Of the runs ``candidates`` (rows), the one sharing the most samples with ``run_id``."""
    mine = set(scores.loc[scores["run_id"] == run_id, "sample_id"])
    best, shared = None, 0
    for _, candidate in candidates.iterrows():
        overlap = len(mine & set(scores.loc[scores["run_id"] == candidate["run_id"], "sample_id"]))
        if overlap > shared:
            best, shared = candidate, overlap
    return best


def paired_frame(frame, scores, reference: str = "h2o"):
    """One record per (generate row, opponent, metric): ``full`` (any budget) and ``reference`` at
    the same ``m``, compared on the samples both ran."""
    import pandas as pd

    out = []
    rows = frame[frame["task"] == "generate"]
    for (dataset, model), group in rows.groupby(["dataset", "model"], sort=True):
        for _, row in group.iterrows():
            for opponent in ("full", reference):
                if row["method"] == opponent:
                    continue
                candidates = group[group["method"] == opponent]
                if opponent != "full":
                    candidates = candidates[candidates["m"] == row["m"]]
                partner = _best_partner(candidates, scores, row["run_id"])
                if partner is None:
                    continue
                mine = scores[scores["run_id"] == row["run_id"]].set_index("sample_id")
                theirs = scores[scores["run_id"] == partner["run_id"]].set_index("sample_id")
                shared = mine.index.intersection(theirs.index)
                for metric in PAIRED_METRICS:
                    a, b = mine.loc[shared, metric], theirs.loc[shared, metric]
                    if a.isna().any() or b.isna().any():
                        continue
                    result = paired_comparison(a.to_numpy(float), b.to_numpy(float))
                    if result is None:
                        continue
                    out.append({"dataset": dataset, "model": model, "method": row["method"],
                                "params": row["params"], "m": row["m"], "versus": opponent, "metric": metric,
                                "n": result.n, "difference": result.difference, "ci_lo": result.ci[0],
                                "ci_hi": result.ci[1], "p_value": result.p_value, "detectable": result.detectable,
                                "significant": result.significant})  # fmt: skip
    return pd.DataFrame(out)


def _blocks(windows: list[dict[str, float]] | None) -> dict[tuple[int, int], float]:
    """A stream's windows as ``{(start, tokens): summed NLL}`` (a window's perplexity is
    ``exp(mean NLL)`` over its tokens)."""
    return {(int(w["start"]), int(w["tokens"])): int(w["tokens"]) * math.log(w["perplexity"])
            for w in windows or [] if w.get("tokens")}  # fmt: skip


def paired_stream_frame(frame, windows: dict[Any, list[dict[str, float]] | None], reference: str = "h2o"):
    """One record per (stream row, opponent): ``full`` (any budget) and ``reference`` at the same
    ``m``, on the same text and length, compared over the windows both runs have (the same tokens).
    ``windows`` maps a run_id to its per-window perplexities. The difference is the change of the
    method's perplexity over the opponent's, in percent (:func:`paired_block_comparison`)."""
    import pandas as pd

    out = []
    rows = frame[frame["task"] == "stream"] if not frame.empty else frame
    if rows.empty:
        return pd.DataFrame(out)
    blocks_of = {run_id: _blocks(runs) for run_id, runs in windows.items()}  # once per run, not per pairing
    keys = ["dataset", STREAMED_TEXT_KEY, "context_length", "model"]
    for (dataset, text, context, model), group in rows.groupby(keys, sort=True, dropna=False):
        for _, row in group.iterrows():
            mine = blocks_of.get(row["run_id"], {})
            for opponent in ("full", reference):
                candidates = group[group["method"] == opponent]
                if opponent != "full":
                    candidates = candidates[candidates["m"] == row["m"]]
                partners = [(blocks_of.get(c["run_id"], {}), c) for _, c in candidates.iterrows()]
                partners = [(blocks, c) for blocks, c in partners if c["run_id"] != row["run_id"]]
                if row["method"] == opponent or not mine or not partners:
                    continue
                # The opponent sharing the most windows; of equals, the newest run (rows are in time order).
                ranked = [(len(mine.keys() & blocks.keys()), i) for i, (blocks, _) in enumerate(partners)]
                theirs, partner = partners[max(ranked)[1]]
                shared = sorted(mine.keys() & theirs.keys())
                sizes = [k[1] for k in shared]
                block = max(1, round(STREAM_BLOCK_TOKENS / statistics.median(sizes))) if sizes else 1
                result = paired_block_comparison([mine[k] for k in shared], [theirs[k] for k in shared], sizes,
                                                 block=block)  # fmt: skip
                if result is None:
                    continue
                out.append({"dataset": dataset, "text": text, "context_length": context, "model": model,
                            "method": row["method"], "params": row["params"], "m": row["m"], "versus": opponent,
                            "versus_run_id": partner["run_id"], "versus_params": partner["params"],
                            "perplexity": row["perplexity"], "versus_perplexity": partner["perplexity"],
                            "windows": len(shared), "blocks": result.n, "change_pct": result.difference,
                            "ci_lo": result.ci[0], "ci_hi": result.ci[1], "p_value": result.p_value,
                            "detectable": result.detectable, "significant": result.significant})  # fmt: skip
    return pd.DataFrame(out)


def _by_model(table, render) -> str:
    """A table per model (base and adapter views are never mixed), each under its model's name."""
    table = table.assign(model=table["model"].fillna("-"))  # rows without a model keep a part of their own
    return "\n\n".join(f"Model: {model}\n\n" + render(part) for model, part in table.groupby("model", sort=True))


def _p(p_value: float) -> str:
    """A permutation p-value cannot go below 1 / (resamples + 1): print that floor as "<0.001"."""
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def _verdict(record: dict[str, Any]) -> str:
    return "differs" if record["significant"] else "no detectable difference"


def _whole(value: Any) -> Any:
    """An integral cell (a budget, a length) as an int, or "-" where it is missing (None or NaN)."""
    return "-" if value is None or value != value else int(value)


def _generate_markdown(table) -> str:
    header = "| method | params | m | vs | metric | n | difference (95% CI) | p | detectable | |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for record in table.to_dict("records"):
        half = (record["ci_hi"] - record["ci_lo"]) / 2
        lines.append(
            f"| {record['method']} | {record['params']} | {_whole(record['m'])} | {record['versus']} | "
            f"{record['metric']} | {record['n']} | {record['difference']:+.2f} ± {half:.2f} | "
            f"{_p(record['p_value'])} | {record['detectable']:.2f} | {_verdict(record)} |"
        )
    return "\n".join(lines)


def _stream_markdown(table) -> str:
    header = (
        "| text | tokens | method | params | m | vs | perplexity | vs perplexity | windows / blocks "
        "| change % (95% CI) | p | detectable % | |"
    )
    lines = [header, "|" + "---|" * 13]
    for record in table.to_dict("records"):
        lines.append(
            f"| {record['text']} | {_whole(record['context_length'])} | {record['method']} | {record['params']} | {_whole(record['m'])} | "
            f"{record['versus']} | {record['perplexity']:.2f} | {record['versus_perplexity']:.2f} | "
            f"{record['windows']} / {record['blocks']} | "
            f"{record['change_pct']:+.1f} [{record['ci_lo']:+.1f}, {record['ci_hi']:+.1f}] | "
            f"{_p(record['p_value'])} | {record['detectable']:.1f} | {_verdict(record)} |"
        )
    return "\n".join(lines)


_GENERATE_NOTE = (
    "Differences are the method minus `vs`, per sample, on the samples both ran (0-100 scales). "
    "p: two-sided sign-flip permutation test. detectable: the smallest true difference these "
    "samples would detect four times in five (alpha 0.05); a smaller one reads as "
    '"no detectable difference", which is not evidence of no difference.'
)
_STREAM_NOTE = (
    "change %: the method's perplexity over `vs`'s on the same tokens, minus one, in percent, from "
    "the windows both runs have. An evicting cache carries its state from window to window, so the "
    f"interval is a moving-block bootstrap over runs of consecutive windows (about {STREAM_BLOCK_TOKENS:,} "
    "tokens; the same runs for both methods) and p is a two-sided sign-flip test over the "
    "non-overlapping runs (blocks). Differences that drift along the stream (a cache that degrades "
    "late) make the runs less alike than a bootstrap assumes: read the interval as this text's, not "
    "as a bound for other lengths. detectable %: the smallest true change these blocks would detect "
    'four times in five (alpha 0.05); a smaller one reads as "no detectable difference", which is '
    "not evidence of no difference."
)


def _write(paired, out_dir: str | Path, prefix: str, render, note: str, what: str) -> list[Path]:
    """``<prefix>_<dataset>.md``, ``.tex`` and ``.csv`` for each dataset of ``paired``."""
    out = Path(out_dir)
    written: list[Path] = []
    if paired.empty:
        return written
    out.mkdir(parents=True, exist_ok=True)
    for dataset, table in paired.groupby("dataset", sort=True):
        stem = out / f"{prefix}_{_slug(dataset)}"
        table.to_csv(stem.with_suffix(".csv"), index=False)
        stem.with_suffix(".md").write_text(_by_model(table, render) + "\n\n" + note + "\n")
        numbers = table.select_dtypes("number").columns
        shown = table.assign(**{c: table[c].round(3) for c in numbers}).drop(columns=["dataset"])
        latex = (
            shown.style.hide(axis="index")
            .format(escape="latex", precision=2)
            .to_latex(hrules=True, caption=f"{what} on {dataset}".replace("_", r"\_"), position="htbp")
        )
        stem.with_suffix(".tex").write_text(latex)
        written += [stem.with_suffix(suffix) for suffix in (".md", ".tex", ".csv")]
    return written


def write_paired_tables(paired, out_dir: str | Path) -> list[Path]:
    """``paired_<dataset>.md``, ``.tex`` and ``.csv``: the paired comparisons of each dataset. The
    Markdown ends with the power note: "no detectable difference" means the difference was smaller
    than the run could see, not that there is none."""
    return _write(paired, out_dir, "paired", _generate_markdown, _GENERATE_NOTE, "Paired comparisons")


def write_paired_stream_tables(paired, out_dir: str | Path) -> list[Path]:
    """``paired_stream_<dataset>.md``, ``.tex`` and ``.csv``: each stream run against ``full`` and the
    reference method on the same tokens, with the same power note."""
    return _write(paired, out_dir, "paired_stream", _stream_markdown, _STREAM_NOTE, "Paired stream comparisons")
