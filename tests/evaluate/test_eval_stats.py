"""Statistics of the evaluation: bootstrap intervals, the paired test, agreement with human labels."""

from __future__ import annotations

import math

from pipelines.evaluate.stats import bootstrap_ci, cohen_kappa, paired_test


def test_bootstrap_interval_brackets_the_rate_and_narrows_with_n() -> None:
    m, lo, hi = bootstrap_ci([1.0] * 30 + [0.0] * 70)
    assert m == 0.3 and lo < 0.3 < hi and lo > 0.15 and hi < 0.45
    _, lo2, hi2 = bootstrap_ci([1.0] * 300 + [0.0] * 700)
    assert hi2 - lo2 < (hi - lo) / 2
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([1.0, 0.0], seed=3) == bootstrap_ci([1.0, 0.0], seed=3)  # seeded


def test_paired_test_finds_a_real_change_and_not_a_null_one() -> None:
    base = [0.0] * 40
    tuned = [1.0] * 30 + [0.0] * 10
    d, p = paired_test(base, tuned)
    assert d == 0.75 and p < 0.001
    same = [1.0, 0.0] * 20
    assert paired_test(same, same) == (0.0, 1.0)
    # Balanced flips: no evidence of a change.
    d, p = paired_test([1.0, 0.0] * 10, [0.0, 1.0] * 10)
    assert d == 0.0 and p > 0.5
    # Pairs with a missing side are dropped, not counted as a change.
    d, p = paired_test([0.0, float("nan")], [0.0, 1.0])
    assert d == 0.0


def test_kappa_and_accuracy() -> None:
    acc, k, n = cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0])
    assert (acc, k, n) == (1.0, 1.0, 4)
    acc, k, _ = cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0])  # chance agreement
    assert acc == 0.5 and abs(k) < 1e-9
    acc, k, _ = cohen_kappa([1, 0, 1, 0], [1, None, 1, None])  # unparseable counts against the judge
    assert acc == 0.5 and k < 1
