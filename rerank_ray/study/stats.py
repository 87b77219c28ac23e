"""Paired significance tests, bootstrap intervals and Holm's correction for the study report.

Every function takes per-query values of two systems on the same queries, in the same order
(``a[i]`` and ``b[i]`` are one query), or a list of p-values; none knows about studies.

- :func:`paired_randomization_test`: two-sided sign-flip test of ``mean(a - b) != 0``; exact
  (all 2^n sign vectors) for n <= 16 queries, otherwise Monte Carlo with ``permutations`` draws
  and the (count + 1) / (draws + 1) estimate (Smucker, Allan & Carterette, CIKM 2007).
- :func:`paired_t_test`: ``scipy.stats.ttest_rel``, two-sided.
- :func:`bootstrap_interval`: percentile bootstrap interval of ``mean(a - b)`` resampling
  queries (pairs stay together), ``scipy.stats.bootstrap``, seeded.
- :func:`holm`: Holm's step-down adjusted p-values (Holm 1979), which control the family-wise
  error rate over all the comparisons given.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

EXACT_MAX_QUERIES = 16


def differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """``a - b`` as floats; both must be equal-length, non-empty 1-d sequences."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape or xa.ndim != 1 or len(xa) == 0:
        raise ValueError(
            f"a paired test needs two equal-length, non-empty 1-d sequences; got {len(a)} and {len(b)}"
        )
    return xa - xb


def paired_randomization_test(
    a: Sequence[float], b: Sequence[float], *, permutations: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p-value of mean(a - b) != 0 under random sign flips of the paired differences."""
    d = differences(a, b)
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, observed)
    if len(d) <= EXACT_MAX_QUERIES:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d) / len(d) >= observed - tolerance))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(permutations, len(d)))
    count = int(np.sum(np.abs(signs @ d) / len(d) >= observed - tolerance))
    return (count + 1) / (permutations + 1)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of scipy's paired t-test; 1.0 when every difference is zero."""
    from scipy import stats

    d = differences(a, b)
    if np.allclose(d, 0.0):
        return 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def bootstrap_interval(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a - b)`` over queries (paired: each resample
    draws queries, keeping a query's two values together). A constant difference gives the
    degenerate interval (d, d)."""
    from scipy import stats

    d = differences(a, b)
    if np.allclose(d, d[0]):
        return float(d[0]), float(d[0])
    result = stats.bootstrap(
        (d,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order.

    Sort ascending, p_(i) -> max over j <= i of min(1, (m - j + 1) * p_(j)) (1-based ranks):
    reject hypothesis i at level alpha iff its adjusted p-value is below alpha."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError(f"holm needs p-values in [0, 1], got {list(pvalues)}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()
