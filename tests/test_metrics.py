"""Metric values against hand computations on tiny strings."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.metrics import (
    bertscore_f1,
    corpus_bleu,
    default_bertscore_model,
    latency_percentiles,
    rouge_f1,
)

PRED, REF = "the cat sat on the mat", "the cat sat on a mat"


def test_bleu_matches_hand_computation():
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert corpus_bleu([PRED], [REF]) == pytest.approx(expected, abs=1e-6)
    assert corpus_bleu([REF], [REF]) == pytest.approx(100.0)


def test_rouge_matches_hand_computation():
    scores = rouge_f1([PRED, "cats running"], [REF, "the cat runs"])
    # Pair 1: unigram overlap 5 of 6 both ways; bigrams 3 of 5; LCS "the cat sat on mat" = 5.
    # Pair 2, stemmed "cat run" vs "the cat run": unigrams P = 2/2, R = 2/3, F = 0.8;
    # bigram "cat run" P = 1/1, R = 1/2, F = 2/3; LCS 2 -> F = 0.8.
    assert scores["rouge1"] == pytest.approx(100 * (5 / 6 + 0.8) / 2)
    assert scores["rouge2"] == pytest.approx(100 * (3 / 5 + 2 / 3) / 2)
    assert scores["rougeL"] == pytest.approx(100 * (5 / 6 + 0.8) / 2)


def _hand_bertscore(candidate: str, reference: str, model_dir: str, layer: int = 6) -> float:
    """Greedy cosine matching of contextual token embeddings, [CLS]/[SEP] excluded, no idf."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()

    def embed(text: str) -> torch.Tensor:
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**encoded, output_hidden_states=True).hidden_states[layer][0, 1:-1]
        return torch.nn.functional.normalize(hidden, dim=-1)

    c, r = embed(candidate), embed(reference)
    similarity = c @ r.T
    precision, recall = similarity.max(1).values.mean().item(), similarity.max(0).values.mean().item()
    return 100 * 2 * precision * recall / (precision + recall)


def test_bertscore_matches_hand_computation():
    model_dir = default_bertscore_model()
    ours = bertscore_f1([PRED], [REF], model_dir, num_layers=6)
    assert ours == pytest.approx(_hand_bertscore(PRED, REF, model_dir), abs=1e-3)
    assert bertscore_f1([REF], [REF], model_dir, num_layers=6) == pytest.approx(100.0, abs=1e-3)
    assert bertscore_f1(["quantum chromodynamics lecture"], [REF], model_dir, num_layers=6) < ours


def test_latency_percentiles():
    p50, p90 = latency_percentiles([0.010, 0.020, 0.030, 0.040, 0.050, 0.060, 0.070, 0.080, 0.090, 0.100, 0.110])
    assert (p50, p90) == (pytest.approx(60.0), pytest.approx(100.0))
    assert latency_percentiles([]) == (None, None)
