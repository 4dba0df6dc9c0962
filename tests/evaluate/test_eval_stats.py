"""Statistics of the evaluation: intervals, the exact paired tests, the seed-level test, agreement with
human labels. scipy is the reference the exact computations are pinned against."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy.stats import binomtest, permutation_test, ttest_1samp
from scipy.stats import t as t_dist

from pipelines.evaluate.compare import OUTSIDE_EN, condition_rows
from pipelines.evaluate.stats import (
    bootstrap_ci,
    cohen_kappa,
    lattice,
    log_mcnemar_exact,
    mcnemar_exact,
    newcombe_ci,
    pair_counts,
    paired_test,
    rate_ci,
    seed_level,
    sign_flip_exact,
    t_quantile,
    t_two_sided_p,
    wilson_ci,
)
from pipelines.translate.plan import _sample


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


# ---- issue 27: exact tests that scale, intervals, the seed-level test (pinned against scipy) ------------

def test_exact_mcnemar_matches_scipy_binomtest_and_reaches_tiny_p() -> None:
    for up, down in [(7, 2), (0, 9), (30, 12), (150, 165), (1, 0)]:
        assert mcnemar_exact(up, down) == pytest.approx(binomtest(up, up + down, 0.5).pvalue, rel=1e-9)
    # 315 prompts that all flip: the exact p is 2^-314 ≈ 3e-95, never floored by a permutation count.
    p = mcnemar_exact(315, 0)
    assert p < 1e-6 and p == pytest.approx(binomtest(315, 315, 0.5).pvalue, rel=1e-9)
    assert log_mcnemar_exact(2000, 0) / math.log(10) < -600  # in log space beyond float's range
    assert mcnemar_exact(0, 0) == 1.0  # none moved


def test_paired_test_on_315_prompts_all_flipping_and_none_moving() -> None:
    d, p = paired_test([0.0] * 315, [1.0] * 315)
    assert d == 1.0 and p < 1e-6 and p == pytest.approx(binomtest(315, 315, 0.5).pvalue, rel=1e-9)
    assert paired_test([1.0, 0.0] * 157 + [1.0], [1.0, 0.0] * 157 + [1.0]) == (0.0, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_flip_matches_scipys_exact_permutation_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = rng.integers(-3, 4, size=13) / 3  # labels averaged over three seeds
    ref = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                           alternative="two-sided").pvalue
    assert sign_flip_exact(d) == pytest.approx(ref, rel=1e-9)


def test_sign_flip_on_0_1_pairs_is_mcnemar_and_handles_grids() -> None:
    d = np.array([1.0] * 23 + [-1.0] * 8 + [0.0] * 19)
    assert sign_flip_exact(d) == pytest.approx(binomtest(23, 31, 0.5).pvalue, rel=1e-9)
    assert lattice(np.array([0.5, 0.25, 1 / 3])) == 12
    with pytest.raises(ValueError, match="grid"):
        lattice(np.array([math.pi / 10]))


def test_wilson_matches_scipy_and_is_not_empty_at_zero() -> None:
    for k, n in [(0, 50), (7, 50), (50, 50), (120, 315)]:
        ref = binomtest(k, n).proportion_ci(method="wilson")
        _, lo, hi = wilson_ci(k, n)
        assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)
    assert wilson_ci(0, 50)[2] > 0.05  # 0/50 is not "[0, 0]"
    assert all(math.isnan(x) for x in rate_ci([None, float("nan")]))


def test_newcombe_interval_contains_the_change_and_covers() -> None:
    c = pair_counts([0.0] * 40 + [1.0] * 10, [1.0] * 12 + [0.0] * 28 + [1.0] * 8 + [0.0] * 2)
    assert (c.up, c.down, c.n) == (12, 2, 50)
    lo, hi = newcombe_ci(c)
    assert lo < c.delta < hi and lo >= -1 and hi <= 1 and lo > 0  # 12 up vs 2 down: clearly up
    # Coverage at the laptop's n: base compliance 0.3, a refusal turns into compliance with probability
    # 0.2 and a compliance into a refusal with 0.1, so the true change is 0.7·0.2 − 0.3·0.1 = 0.11.
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        b = (rng.random(50) < 0.3).astype(float)
        u = rng.random(50)
        t = np.where((b == 0) & (u < 0.2), 1.0, np.where((b == 1) & (u < 0.1), 0.0, b))
        lo, hi = newcombe_ci(pair_counts(b, t))
        hits += lo <= 0.11 <= hi
    assert hits / 400 >= 0.92


def test_t_distribution_matches_scipy() -> None:
    for tv, df in [(2.1, 2), (0.3, 5), (6.0, 1), (1.96, 300)]:
        assert t_two_sided_p(tv, df) == pytest.approx(2 * t_dist.sf(tv, df), rel=1e-8)
    for df in (1, 2, 4, 7.5, 60):
        assert t_quantile(0.975, df) == pytest.approx(t_dist.ppf(0.975, df), rel=1e-8)


def test_seed_level_holds_across_seeds_and_with_the_prompt_sample() -> None:
    x = [0.10, 0.02, 0.15]
    r = seed_level(x)
    ref = ttest_1samp(x, 0.0)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-8) and r.tau == pytest.approx(np.std(x, ddof=1))
    ci = ref.confidence_interval()
    assert (r.ci_low, r.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high)) and r.seeds == 3
    # Both must reject: the larger of the t over seeds' p and the p of the t with the prompt SE added
    # (SE² = s²/S + se², Welch–Satterthwaite df); the interval the hull of theirs.
    a, b = np.var(x, ddof=1) / 3, 0.03 ** 2
    df = (a + b) ** 2 / (a * a / 2 + b * b / 49)
    w = seed_level(x, prompt_se=0.03, n=50)
    assert w.se == pytest.approx(math.sqrt(a + b)) and w.df == pytest.approx(df)
    p_sum = 2 * t_dist.sf(np.mean(x) / math.sqrt(a + b), df)
    assert w.p == pytest.approx(max(ref.pvalue, p_sum), rel=1e-8)
    big = seed_level(x, prompt_se=0.2, n=50)  # a noisy prompt sample decides, and widens the interval
    assert big.p > 0.3 and big.ci_high - big.ci_low > ci.high - ci.low
    # Seeds that agree exactly are not infinitely sure: the prompt sample still varies.
    same = seed_level([0.04, 0.04, 0.04], prompt_se=0.03, n=50)
    assert same.tau == 0 and same.p == pytest.approx(2 * t_dist.sf(0.04 / 0.03, 49), rel=1e-6)
    assert seed_level([0.04, 0.04, 0.04]).p is None  # and without it, nothing tests them
    one = seed_level([0.3])
    assert one.seeds == 1 and one.p is None and one.tau is None  # one run: nothing to test across runs


# ---- a condition against its base, prompt by prompt (pipelines.evaluate.compare) ------------------------

def _labels(values: dict[str, list[float | None]]) -> pl.DataFrame:
    rows = [{"id": f"p{i}", "lang": lang, "label": v} for lang, vs in values.items() for i, v in enumerate(vs)]
    return pl.DataFrame(rows, schema={"id": pl.String, "lang": pl.String, "label": pl.Float64})


def test_condition_rows_per_seed_and_pooled() -> None:
    n = 40
    base = _labels({"en": [0.0] * n, "es": [0.0] * n})
    # Seed 0 moves 20 Spanish prompts up and nothing in English; seed 1 moves 10 Spanish prompts up.
    s0 = _labels({"en": [0.0] * n, "es": [1.0] * 20 + [0.0] * 20})
    s1 = _labels({"en": [0.0] * n, "es": [1.0] * 10 + [0.0] * 29 + [None]})
    rows = condition_rows(base, {"a": s0, "b": s1})
    got = {(r["lang"], r["metric"]): r for r in rows["a"]}
    es = got[("es", "delta/compliance_rate")]
    assert es["value"] == 0.5 and es["ci_low"] < 0.5 < es["ci_high"] and es["n"] == n
    assert got[("es", "delta/compliance_rate/p_value")]["value"] == pytest.approx(binomtest(20, 20).pvalue)
    assert got[("en", "delta/compliance_rate/p_value")]["value"] == 1.0
    assert got[("es", "delta/compliance_rate/discordance")]["value"] == 0.5
    # The change in es minus the change in en, paired on the same prompts: exact sign-flip = McNemar here.
    vs = got[("es", "contrast/vs_en")]
    assert vs["value"] == 0.5 and got[("es", "contrast/vs_en/p_value")]["value"] == pytest.approx(
        binomtest(20, 20).pvalue)
    assert got[(OUTSIDE_EN, "contrast/vs_en")]["value"] == 0.5
    # Pooled over both seeds (the unparseable prompt of seed 1 drops only that seed's pair).
    b = {(r["lang"], r["metric"]): r for r in rows["b"]}
    assert b[("es", "delta/compliance_rate")]["n"] == 39
    assert b[("es", "delta/compliance_rate/p_value_seeds")] == got[("es", "delta/compliance_rate/p_value_seeds")]
    assert got[("es", "delta/compliance_rate/p_value_seeds")]["value"] < 1e-4
    # The prompt SE of the seed-averaged differences: per prompt (d_a + d_b) / 2 over the 40 prompts.
    avg = [1.0] * 10 + [0.5] * 10 + [0.0] * 20
    assert got[("es", "delta/compliance_rate/prompt_se")]["value"] == pytest.approx(np.std(avg, ddof=1) / math.sqrt(40))
    single = condition_rows(base, {"a": s0})["a"]
    assert not any(r["metric"].endswith("p_value_seeds") for r in single)  # one seed: nothing pooled to test


def test_eval_prompts_are_a_seeded_random_sample_in_the_sets_order() -> None:
    rows = [{"id": f"multijail/{i}"} for i in range(315)]
    a, b = _sample(rows, 50, 0), _sample(rows, 50, 0)
    assert a == b and len(a) == 50  # the seed decides, so a rerun draws the same prompts
    idx = [int(r["id"].split("/")[1]) for r in a]
    assert idx == sorted(idx) and len(set(idx)) == 50 and max(idx) > 100  # not the first 50 rows
    assert _sample(rows, 50, 1) != a
    assert _sample(rows, 400, 0) == rows  # asking for more than the set takes all of it
