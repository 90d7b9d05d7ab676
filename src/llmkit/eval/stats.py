"""Confidence intervals for eval metrics: SciPy's bootstrap (BCa where it is defined, else percentile).

    lo, hi = bootstrap_ci([1, 0, 1, 1, 0])                 # 95% CI of a mean
    d, lo, hi = paired_difference_ci(scores_a, scores_b)   # mean of a - b over the same items, and its CI

A paired bootstrap resamples items, not scores, so two prompts or two models scored on the same items are
compared item by item (the item-to-item variance cancels). A fixed seed makes a report reproducible.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def bootstrap_ci(values, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0,
                 statistic=np.mean) -> tuple[float, float]:
    """The bootstrap confidence interval of `statistic` (default: the mean) of `values`; (nan, nan) when there
    are fewer than 2 values. When every resample gives the same value (all 0, all 1) the interval is that
    value: the data show no spread to resample."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        v = float(statistic(x))
        return v, v
    with warnings.catch_warnings():  # BCa is undefined for some degenerate samples: SciPy warns, we fall back
        warnings.simplefilter("ignore")
        for method in ("BCa", "percentile"):
            r = bootstrap((x,), statistic, confidence_level=confidence, n_resamples=resamples, method=method,
                          random_state=np.random.default_rng(seed), vectorized=False)
            lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
            if not (math.isnan(lo) or math.isnan(hi)):
                return lo, hi
    return lo, hi


def paired_difference_ci(a, b, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean of a - b, low, high): the paired bootstrap CI of the mean difference over the same items."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.shape} vs {b.shape}")
    d = a - b
    lo, hi = bootstrap_ci(d, confidence, resamples, seed)
    return float(d.mean()) if len(d) else math.nan, lo, hi


def excludes_zero(lo: float, hi: float) -> bool:
    """A difference is called only when its whole interval lies on one side of 0."""
    return not (math.isnan(lo) or math.isnan(hi)) and (lo > 0 or hi < 0)
