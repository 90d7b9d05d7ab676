"""Bootstrap intervals: they cover the mean, shrink with more items, and a paired difference sees what an
unpaired comparison of two noisy score lists would not."""

import numpy as np

from llmkit.eval.stats import bootstrap_ci, excludes_zero, paired_difference_ci


def test_bootstrap_ci_covers_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small, large = rng.binomial(1, 0.3, 40), rng.binomial(1, 0.3, 1000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_ci([0.5])))


def test_paired_difference_sees_a_small_consistent_gain():
    rng = np.random.default_rng(2)
    item_difficulty = rng.normal(0, 1, 200)  # large spread between items, shared by both prompts
    a = item_difficulty + 0.1 + rng.normal(0, 0.02, 200)
    b = item_difficulty
    d, lo, hi = paired_difference_ci(a, b)
    assert abs(d - 0.1) < 0.01 and excludes_zero(lo, hi)
    d, lo, hi = paired_difference_ci(b, b + rng.normal(0, 0.02, 200))
    assert not excludes_zero(lo, hi)
