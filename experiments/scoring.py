"""Scoring a generation run: per-sample scores, the row's aggregates and their 95% intervals.

Each sample gets ROUGE-1/2/L F1, BERTScore-F1, sentence BLEU and (where the dataset has a gold
answer) exact match, all on a 0-100 scale; they go into ``predictions.jsonl``, so that paired
comparisons between methods and re-scoring need no decoding. The row keeps the aggregates the
harness has always reported (corpus BLEU, mean ROUGE, mean BERTScore-F1, accuracy) and, beside
each, ``<metric>_ci = [lo, hi]``: a seeded percentile bootstrap over samples (corpus BLEU recomputed
on every resample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from experiments.metrics import (
    ROUGE_TYPES,
    bertscore_per_sample,
    bleu_statistics,
    corpus_bleu,
    corpus_bleu_from_statistics,
    final_number,
    normalize_number,
)
from experiments.stats import bootstrap_ci, corpus_ci

#: Per-sample score keys of ``predictions.jsonl`` (``exact_match`` only where answers exist).
SAMPLE_METRICS = (*ROUGE_TYPES, "bertscore_f1", "sentence_bleu", "exact_match")


def rouge_per_sample(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F1 (x100) of each pair, with stemming."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out = []
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
        out.append({name: 100.0 * scores[name].fmeasure for name in ROUGE_TYPES})
    return out


def sentence_bleu(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """sacrebleu's smoothed sentence BLEU of each pair (the corpus score is not their mean)."""
    import sacrebleu

    return [float(sacrebleu.sentence_bleu(p, [r]).score) for p, r in zip(predictions, references, strict=True)]


def exact_match(prediction: str, answer: str) -> float:
    """100 when the prediction's final number equals the gold answer's, else 0."""
    predicted = final_number(prediction)
    return 100.0 if predicted is not None and predicted == normalize_number(answer) else 0.0


@dataclass
class GenerationScores:
    """``per_sample``: one dict of :data:`SAMPLE_METRICS` per sample; ``row``: aggregates and intervals."""

    per_sample: list[dict[str, float]]
    row: dict[str, Any]


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [_rounded(ci[0]), _rounded(ci[1])]


def score_generation(
    predictions: Sequence[str],
    references: Sequence[str],
    answers: Sequence[str | None],
    bertscore_model: str,
    bertscore_layers: int,
    device: str = "cpu",
    seed: int = 0,
) -> GenerationScores:
    """Score every sample, then aggregate with intervals (``answers[i]`` is ``None`` where the
    dataset has no gold answer; accuracy is reported only when every sample has one)."""
    rouge = rouge_per_sample(predictions, references)
    bert = bertscore_per_sample(predictions, references, bertscore_model, bertscore_layers, device)
    bleu = sentence_bleu(predictions, references)
    with_answers = bool(answers) and all(answer is not None for answer in answers)
    raw = []
    for i, prediction in enumerate(predictions):
        scores = {**rouge[i], "bertscore_f1": bert[i], "sentence_bleu": bleu[i]}
        if with_answers:
            scores["exact_match"] = exact_match(prediction, answers[i])
        raw.append(scores)

    statistics = bleu_statistics(predictions, references)

    def corpus(indices) -> float:  # the resample's corpus BLEU, from its pairs' n-gram counts
        return corpus_bleu_from_statistics(statistics[indices].sum(axis=0))

    row: dict[str, Any] = {"bleu": _rounded(corpus_bleu(predictions, references)),
                           "bleu_ci": _interval(corpus_ci(len(predictions), corpus, seed=seed))}  # fmt: skip
    means = [*ROUGE_TYPES, "bertscore_f1"] + (["exact_match"] if with_answers else [])
    for metric in means:
        values = [scores[metric] for scores in raw]
        key = "accuracy" if metric == "exact_match" else metric
        row[key] = _rounded(sum(values) / len(values), 2 if key == "accuracy" else 4) if values else None
        row[f"{key}_ci"] = _interval(bootstrap_ci(values, seed=seed))
    per_sample = [{k: _rounded(v) for k, v in scores.items()} for scores in raw]
    return GenerationScores(per_sample, row)
