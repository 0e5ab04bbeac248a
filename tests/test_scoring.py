"""Per-sample scores agree with the corpus-level metrics, empty predictions score 0, and the row's
intervals contain its point values."""

from __future__ import annotations

import pytest

from experiments.metrics import corpus_bleu, default_bertscore_model, exact_match_accuracy, rouge_f1
from experiments.scoring import score_generation

REFERENCES = [
    "the committee approved the budget for next year",
    "rain is expected across the north on monday",
    "the answer is 42 #### 42",
    "prices rose by three percent in march",
]
PREDICTIONS = ["the committee approved the new budget", "", "so the answer is 42", "prices fell in march"]
ANSWERS = ["1", "2", "42", "3"]


@pytest.fixture(scope="module")
def scores():
    return score_generation(PREDICTIONS, REFERENCES, ANSWERS, default_bertscore_model(), 6)


def test_per_sample_scores_aggregate_to_the_corpus_metrics(scores):
    assert len(scores.per_sample) == 4
    assert scores.row["rougeL"] == pytest.approx(rouge_f1(PREDICTIONS, REFERENCES)["rougeL"], abs=1e-3)
    assert scores.row["bleu"] == pytest.approx(corpus_bleu(PREDICTIONS, REFERENCES), abs=1e-3)
    assert scores.row["accuracy"] == pytest.approx(exact_match_accuracy(PREDICTIONS, ANSWERS))
    assert [s["exact_match"] for s in scores.per_sample] == [0.0, 0.0, 100.0, 0.0]


def test_an_empty_prediction_scores_zero_and_the_rest_are_scored(scores):
    empty = scores.per_sample[1]
    assert empty["bertscore_f1"] == 0.0 and empty["rougeL"] == 0.0
    assert scores.per_sample[0]["bertscore_f1"] > 50.0


def test_every_interval_contains_its_point_value(scores):
    for key in ("rouge1", "rouge2", "rougeL", "bertscore_f1", "accuracy"):
        lo, hi = scores.row[f"{key}_ci"]
        assert lo <= scores.row[key] <= hi and lo < hi, key


def test_no_accuracy_without_gold_answers():
    result = score_generation(PREDICTIONS[:2], REFERENCES[:2], [None, None], default_bertscore_model(), 6)
    assert "accuracy" not in result.row and "exact_match" not in result.per_sample[0]
