"""Bootstrap intervals against hand computations, and paired tests that move the right way."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from experiments.metrics import bleu_statistics, corpus_bleu, corpus_bleu_from_statistics
from experiments.stats import (
    block_bootstrap_ci,
    bootstrap_ci,
    corpus_ci,
    half_width,
    paired_block_comparison,
    paired_cluster_ratio_ci,
    paired_comparison,
    stratified_ratio_ci,
)


def test_bootstrap_of_the_mean_matches_the_exact_bootstrap_distribution():
    scores = [0.0, 1.0, 2.0, 10.0]
    # Every resample of 4 from 4 is equally likely: the exact bootstrap distribution has 256 atoms.
    exact = sorted(sum(draw) / 4 for draw in itertools.product(scores, repeat=4))
    lo_exact, hi_exact = np.percentile(exact, [2.5, 97.5])
    lo, hi = bootstrap_ci(scores, resamples=50_000, seed=1)
    assert lo == pytest.approx(lo_exact, abs=0.25) and hi == pytest.approx(hi_exact, abs=0.25)
    assert lo < np.mean(scores) < hi


def test_bootstrap_is_seeded_and_needs_two_samples():
    assert bootstrap_ci([1.0, 5.0, 2.0], seed=3) == bootstrap_ci([1.0, 5.0, 2.0], seed=3)
    assert bootstrap_ci([1.0]) is None
    assert bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)


def test_corpus_bleu_is_recomputed_on_every_resample():
    references = ["the cat sat on the mat today", "a dog ran in the park at noon", "it rained all day long here"]
    perfect = corpus_ci(3, lambda idx: corpus_bleu([references[i] for i in idx], [references[i] for i in idx]))
    assert perfect == pytest.approx((100.0, 100.0))
    predictions = ["the cat sat on the mat", "a dog ran in a park", "nothing like it"]
    point = corpus_bleu(predictions, references)
    lo, hi = corpus_ci(3, lambda idx: corpus_bleu([predictions[i] for i in idx], [references[i] for i in idx]))
    assert lo <= point <= hi and lo < hi


def test_corpus_bleu_from_summed_pair_statistics_equals_sacrebleu_on_resamples():
    """The bootstrap's fast path: corpus BLEU of any resample (repeats, an empty prediction, a
    resample without any 4-gram match) from the sum of its pairs' counts, against sacrebleu itself."""
    predictions = ["the cat sat on the mat", "", "a dog ran in a park today", "nothing like it", "it rained all day"]
    references = ["the cat sat on the mat today", "a bird", "a dog ran in the park at noon", "it rained", "all day"]
    statistics = bleu_statistics(predictions, references)
    draws = np.random.default_rng(0).integers(0, 5, size=(30, 5))
    for indices in [np.arange(5), np.array([1, 1, 3]), *draws]:
        expected = corpus_bleu([predictions[i] for i in indices], [references[i] for i in indices])
        assert corpus_bleu_from_statistics(statistics[indices].sum(axis=0)) == pytest.approx(expected, abs=1e-9)


def test_block_bootstrap_of_a_stream():
    assert block_bootstrap_ci([2.0] * 64, block=16) == pytest.approx((math.exp(2.0), math.exp(2.0)))
    assert block_bootstrap_ci([2.0] * 10, block=16) is None  # one block: no interval
    rising = [1.0] * 32 + [3.0] * 32
    lo, hi = block_bootstrap_ci(rising, block=16)
    assert lo < math.exp(2.0) < hi


def test_paired_p_value_falls_as_one_method_is_made_worse():
    rng = np.random.default_rng(0)
    a = rng.normal(50, 10, size=64)
    b = a + rng.normal(0, 3, size=64)  # the same method with noise
    same = paired_comparison(a, b)
    worse = paired_comparison(a - 1.0, b)
    much_worse = paired_comparison(a - 5.0, b)
    assert same.p_value > 0.05 and not same.significant
    assert much_worse.p_value < worse.p_value < 1.0
    assert much_worse.significant and much_worse.ci[1] < 0 < same.ci[1]
    assert much_worse.difference == pytest.approx(float(np.mean(a - 5.0 - b)))


def test_detectable_difference_shrinks_with_the_square_root_of_n():
    rng = np.random.default_rng(0)
    diff = rng.normal(0, 4, size=16)
    small = paired_comparison(diff, np.zeros(16))
    large = paired_comparison(np.tile(diff, 4), np.zeros(64))
    assert large.detectable == pytest.approx(small.detectable / 2, rel=0.05)
    assert half_width((1.0, 5.0)) == 2.0 and half_width(None) is None


def test_paired_block_comparison_against_the_exact_bootstrap_and_a_worse_stream():
    """Four blocks of a stream: the change of perplexity is exp of the NLL difference per token, and
    its interval matches the exact bootstrap distribution (all 256 resamples of 4 blocks)."""
    tokens = np.array([10.0, 20.0, 10.0, 16.0])
    b = np.array([20.0, 40.0, 30.0, 35.0])  # summed NLL per block
    a = b + np.array([1.0, 4.0, 3.0, -1.0])
    result = paired_block_comparison(a, b, tokens, resamples=50_000, seed=2)
    assert result.n == 4
    assert result.difference == pytest.approx(100 * (math.exp(7.0 / 56.0) - 1))
    diff = a - b
    exact = [100 * (math.exp(diff[list(d)].sum() / tokens[list(d)].sum()) - 1)
             for d in itertools.product(range(4), repeat=4)]  # fmt: skip
    assert result.ci == pytest.approx(tuple(np.percentile(exact, [2.5, 97.5], method="inverted_cdf")), abs=0.5)
    # The exact sign-flip distribution: all 16 sign patterns of the 4 block differences.
    flips = [abs(np.dot(signs, diff)) for signs in itertools.product((-1.0, 1.0), repeat=4)]
    assert result.p_value == pytest.approx(np.mean(np.array(flips) >= abs(diff.sum())), abs=0.02)

    rng = np.random.default_rng(0)
    counts = np.full(36, 256.0)
    base = rng.normal(3.5, 0.3, size=36) * counts
    noise = rng.normal(0, 0.05, size=36) * counts
    same = paired_block_comparison(base + noise, base, counts)
    worse = paired_block_comparison(base + noise + 0.02 * counts, base, counts)
    much_worse = paired_block_comparison(base + noise + 0.1 * counts, base, counts)
    assert not same.significant and much_worse.significant
    assert much_worse.p_value <= worse.p_value < same.p_value
    assert much_worse.ci[0] > 0 and same.ci[0] < 0 < same.ci[1]
    assert paired_block_comparison([1.0], [1.0], [4.0]) is None
    assert paired_block_comparison([1.0, float("nan"), 2.0], [1.0, 1.0, 1.0], [4.0] * 3) is None


def test_paired_block_comparison_widens_for_correlated_windows():
    """Differences that persist over neighbouring windows (a cache state carried along the stream):
    runs of 4 windows give a wider interval and a larger p than treating windows as independent,
    and the p-value floor follows the number of runs."""
    rng = np.random.default_rng(3)
    slow = np.repeat(rng.normal(0.05, 0.3, size=12), 4)  # the same difference for 4 windows at a time
    counts = np.full(48, 256.0)
    b = rng.normal(3.5, 0.2, size=48) * counts
    a = b + slow * counts
    single = paired_block_comparison(a, b, counts, block=1)
    runs = paired_block_comparison(a, b, counts, block=4)
    assert runs.n == 12 and single.n == 48
    assert runs.difference == pytest.approx(single.difference)
    assert (runs.ci[1] - runs.ci[0]) > 1.3 * (single.ci[1] - single.ci[0])
    assert runs.p_value > single.p_value and runs.detectable > single.detectable


def test_stratified_ratio_matches_the_exact_bootstrap_of_a_tiny_case():
    # Numerator [1, 3] resamples to a mean of 1, 2 or 3 (probabilities 1/4, 1/2, 1/4); the denominator
    # [2, 2] always to 2: the ratio's 2.5th and 97.5th percentiles are 0.5 and 1.5.
    assert stratified_ratio_ci([[1.0, 3.0]], [[2.0, 2.0]]) == pytest.approx((0.5, 1.5))


def test_stratified_ratio_resamples_within_each_stratum_only():
    """Two rounds, each constant within itself but far apart: resampled within rounds, every draw has
    the same mean, so the interval is the point; resampled across them it would not be."""
    slow_and_fast = [[1.0] * 5, [3.0] * 5]
    assert stratified_ratio_ci(slow_and_fast, [[2.0] * 4]) == pytest.approx((1.0, 1.0))
    pooled = bootstrap_ci([1.0] * 5 + [3.0] * 5)
    assert pooled[1] - pooled[0] > 0.5  # what ignoring the rounds would have claimed as noise


def test_stratified_ratio_needs_two_samples_a_side():
    assert stratified_ratio_ci([[1.0]], [[1.0, 2.0]]) is None
    assert stratified_ratio_ci([[1.0], [2.0]], [[1.0, 2.0]]) is not None  # two rounds of one step each


def test_paired_cluster_ratio_matches_the_exact_bootstrap_of_a_tiny_case():
    # Clusters drawn as (0, 0), (0, 1), (1, 0), (1, 1): numerator means 1, 2, 2, 3 over the
    # denominator's 2 every time; the 2.5th and 97.5th percentiles are 0.5 and 1.5.
    assert paired_cluster_ratio_ci([[1.0], [3.0]], [[2.0], [2.0]]) == pytest.approx((0.5, 1.5))


def test_paired_clusters_cancel_what_both_sides_share():
    """A turn twice as slow for both methods moves neither's ratio: resampling the same turns on both
    sides gives the point; resampling them independently would not."""
    fast_then_slow = [[1.0, 1.0], [3.0, 3.0]]
    assert paired_cluster_ratio_ci(fast_then_slow, [[2.0, 2.0], [6.0, 6.0]]) == pytest.approx((0.5, 0.5))
    unpaired = stratified_ratio_ci([[1.0, 1.0, 3.0, 3.0]], [[2.0, 2.0, 6.0, 6.0]])
    assert unpaired[1] - unpaired[0] > 0.2
    assert paired_cluster_ratio_ci([[1.0]], [[1.0]]) is None  # one turn: no interval
    assert paired_cluster_ratio_ci([[1.0], [2.0]], [[1.0]]) is None  # turns do not pair
