"""Intervals and paired tests for the result rows: what makes a number citable.

* :func:`bootstrap_ci`: percentile bootstrap over samples of any statistic (the mean of per-sample
  scores, or a corpus score such as BLEU recomputed on each resample).
* :func:`block_bootstrap_ci`: the same over contiguous blocks of a stream's tokens (per-token NLLs are
  correlated, so tokens are not resampled one by one).
* :func:`stratified_ratio_ci`: a ratio of two means whose samples come in strata (the rounds of a speed
  run), each stratum resampled within itself; :func:`paired_cluster_ratio_ci`: the same with whole
  clusters resampled, paired across the two sides (the interleaved turns of two methods).
* :func:`paired_comparison`: two methods on the same samples: the mean difference, its bootstrap
  interval, a two-sided sign-flip permutation p-value, and the smallest difference the run could
  detect (80% power at alpha 0.05), so that "no difference" can be told from "too few samples".
* :func:`paired_block_comparison`: the same for two streams of the same tokens, over blocks: the
  change of one perplexity over the other, in percent.

Every function is seeded: the same scores give the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
# (z_{1 - alpha/2} + z_{power}) for alpha = 0.05 and 80% power: a true difference of this many
# standard errors is detected four times in five.
_DETECTABLE_SE = 1.959964 + 0.841621


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(
    scores: Sequence[float] | Sequence[int],
    statistic: Callable[[np.ndarray], float] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over the samples.

    ``statistic`` receives one resample of ``scores`` (``[n]``, drawn with replacement).
    ``None`` when there are fewer than two samples.
    """
    values = np.asarray(scores, dtype=np.float64)
    n = len(values)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    means_only = statistic is None  # vectorised: one mean per row of draws
    stats = values[draws].mean(axis=1) if means_only else np.array([statistic(values[d]) for d in draws])
    return _percentile_interval(stats, confidence)


def corpus_ci(
    n: int,
    corpus_score: Callable[[np.ndarray], float],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Bootstrap interval of a corpus-level score (BLEU): ``corpus_score(indices)`` is recomputed on
    every resample of the ``n`` samples' indices (``[n]`` ints, with repeats)."""
    return bootstrap_ci(
        np.arange(n), lambda idx: corpus_score(idx.astype(int)), resamples=resamples, seed=seed, confidence=confidence
    )


def block_bootstrap_ci(
    nll: Sequence[float],
    block: int,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Interval of a stream's perplexity ``exp(mean NLL)``, resampling its non-overlapping blocks of
    ``block`` tokens with replacement (the last, shorter block included, weighted by its length).
    ``None`` with fewer than two blocks."""
    values = np.asarray(nll, dtype=np.float64)
    starts = range(0, len(values), block)
    sums = np.array([values[s : s + block].sum() for s in starts])
    counts = np.array([len(values[s : s + block]) for s in starts], dtype=np.float64)
    if len(sums) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    perplexities = np.exp(sums[draws].sum(axis=1) / counts[draws].sum(axis=1))
    return _percentile_interval(perplexities, confidence)


def stratified_ratio_ci(
    numerator: Sequence[Sequence[float]],
    denominator: Sequence[Sequence[float]],
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``mean(numerator) / mean(denominator)``, each side given as
    strata (``[stratum][sample]``, e.g. a method's decode steps per round of a speed run).

    Every stratum is resampled within itself, keeping its count, so a difference *between* strata (the
    machine slower in one round than in another, alike for methods that alternate) is not read as
    noise; the interval covers the sampling noise within them. ``None`` when a side has fewer than
    two samples in all.
    """

    def resampled_sums(strata: Sequence[Sequence[float]], rng: np.random.Generator) -> tuple[np.ndarray, int]:
        total, count = np.zeros(resamples), 0
        for stratum in strata:
            values = np.asarray(stratum, dtype=np.float64)
            if len(values):
                total += values[rng.integers(0, len(values), size=(resamples, len(values)))].sum(axis=1)
                count += len(values)
        return total, count

    if sum(map(len, numerator)) < 2 or sum(map(len, denominator)) < 2:
        return None
    rng = np.random.default_rng(seed)
    top, n_top = resampled_sums(numerator, rng)
    bottom, n_bottom = resampled_sums(denominator, rng)
    return _percentile_interval((top / n_top) / (bottom / n_bottom), confidence)


def paired_cluster_ratio_ci(
    numerator: Sequence[Sequence[float]],
    denominator: Sequence[Sequence[float]],
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``mean(numerator) / mean(denominator)`` where cluster ``k`` of
    both sides belongs together (``[cluster][sample]``; e.g. turn ``k`` of two methods decoding in
    alternation): whole clusters are resampled, the same indices on both sides, so the noise between
    clusters (a stretch of a slow machine) enters the interval while what clusters share cancels.
    ``None`` with fewer than two clusters or unequal counts of them."""
    if len(numerator) != len(denominator) or len(numerator) < 2:
        return None
    sums = np.array([[sum(a), len(a), sum(b), len(b)] for a, b in zip(numerator, denominator, strict=True)])
    rng = np.random.default_rng(seed)
    drawn = sums[rng.integers(0, len(sums), size=(resamples, len(sums)))].sum(axis=1)  # [resamples, 4]
    return _percentile_interval((drawn[:, 0] / drawn[:, 1]) / (drawn[:, 2] / drawn[:, 3]), confidence)


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` over the same samples.

    Attributes:
        n: samples compared.
        difference: mean of the per-sample differences.
        ci: its bootstrap interval.
        p_value: two-sided sign-flip permutation p-value of "no difference".
        detectable: the smallest true difference this many samples would detect with 80% power at
            alpha 0.05 (2.8 standard errors of the mean difference).
    """

    n: int
    difference: float
    ci: tuple[float, float]
    p_value: float
    detectable: float

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - CONFIDENCE


def paired_comparison(
    a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> PairedComparison | None:
    """Compare two methods' per-sample scores on the same samples (same order). ``None`` with fewer
    than two pairs."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(diff)
    if n < 2:
        return None
    observed = float(diff.mean())
    ci = bootstrap_ci(diff, resamples=resamples, seed=seed)
    assert ci is not None
    # Under "no difference" each pair's sign is a coin flip: how often is a flipped mean as extreme?
    rng = np.random.default_rng(seed + 1)
    signs = rng.choice((-1.0, 1.0), size=(resamples, n))
    flipped = np.abs((signs * diff).mean(axis=1))
    p_value = float((np.sum(flipped >= abs(observed) - 1e-12) + 1) / (resamples + 1))
    standard_error = float(diff.std(ddof=1) / np.sqrt(n))
    return PairedComparison(n, observed, ci, p_value, _DETECTABLE_SE * standard_error)


def paired_block_comparison(
    a_nll: Sequence[float],
    b_nll: Sequence[float],
    tokens: Sequence[float],
    block: int = 1,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> PairedComparison | None:
    """Two methods streamed over the same tokens, compared window by window.

    ``a_nll`` and ``b_nll`` ``[windows]``: each method's summed NLL over the same consecutive windows
    of ``tokens`` ``[windows]`` tokens. The difference is the change of a's perplexity over b's in
    percent, ``100 * (exp((sum a - sum b) / sum tokens) - 1)``.

    An evicting cache carries its state from one window to the next, so neighbouring windows'
    differences are correlated: the interval is a moving-block bootstrap (runs of ``block``
    consecutive windows, the same runs for both methods), the p-value flips the sign of each
    non-overlapping run of ``block`` windows, and ``detectable`` is :data:`_DETECTABLE_SE` bootstrap
    standard errors of the log ratio, as a percentage. ``None`` with fewer than two runs, or when a
    window's NLL is not finite (a NaN would otherwise read as a certain difference)."""
    diff = np.asarray(a_nll, dtype=np.float64) - np.asarray(b_nll, dtype=np.float64)
    counts = np.asarray(tokens, dtype=np.float64)
    n = len(diff)
    block = max(1, min(int(block), n))
    runs = -(-n // block)  # non-overlapping runs, the last one possibly shorter
    if runs < 2 or not np.isfinite(diff).all():
        return None
    log_ratio = float(diff.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(resamples, runs))
    picked = (starts[..., None] + np.arange(block)).reshape(resamples, -1)  # [resamples, runs * block]
    resampled = diff[picked].sum(axis=1) / counts[picked].sum(axis=1)
    lo, hi = _percentile_interval(100 * np.expm1(resampled), CONFIDENCE)
    run_sums = np.add.reduceat(diff, np.arange(0, n, block))
    signs = np.random.default_rng(seed + 1).choice((-1.0, 1.0), size=(resamples, runs))
    flipped = np.abs(signs @ run_sums)
    p_value = float((np.sum(flipped >= abs(diff.sum()) - 1e-12) + 1) / (resamples + 1))
    detectable = float(100 * np.expm1(_DETECTABLE_SE * resampled.std(ddof=1)))
    return PairedComparison(runs, float(100 * np.expm1(log_ratio)), (lo, hi), p_value, detectable)


def half_width(ci: Sequence[float] | None) -> float | None:
    """Half the width of an interval (what a table prints after ``±``)."""
    if ci is None:
        return None
    return (float(ci[1]) - float(ci[0])) / 2
