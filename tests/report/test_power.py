"""Power: one run's exact McNemar power matches a simulation with the real test, the MDE is the smallest
change with 80% power and shrinks with n; the t over seeds' power matches scipy's noncentral t, grows
with seeds and falls with τ, and the plan for a change of 0.10 is the fewest seeds that reach it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import nct
from scipy.stats import t as t_dist

from pipelines.evaluate.stats import seed_level
from pipelines.report.power import (
    PLAN_PROMPTS,
    PLAN_SEEDS,
    mde_normal,
    mde_paired,
    mde_seeds,
    power_paired,
    power_seeds,
    power_statement,
    seed_parts,
    seed_plan,
    simulated_power,
    t_power,
)


@pytest.mark.parametrize(("n", "base", "delta", "flip"), [(50, 0.2, 0.23, 0.05), (40, 0.3, -0.2, 0.05),
                                                        (50, 0.85, 0.1, 0.0)])
def test_exact_power_matches_the_exact_test_simulated(n: int, base: float, delta: float, flip: float) -> None:
    exact = power_paired(n, base, delta, flip)
    trials = 500
    sim = simulated_power(n, base, delta, flip, trials=trials, seed=1)
    # Three binomial standard errors of the simulated share (the test is exact, so nothing more).
    assert abs(sim - exact) <= 3 * math.sqrt(exact * (1 - exact) / trials) + 1e-9, (sim, exact)


def test_mde_is_the_smallest_change_with_the_power() -> None:
    n, base, flip = 50, 0.2, 0.05
    mde = mde_paired(n, base, flip)
    assert mde is not None and 0.1 < mde < 0.4
    assert power_paired(n, base, mde, flip) >= 0.80
    assert power_paired(n, base, mde - 0.005, flip) < 0.80
    # Simulated with the real test at the MDE: near 80% (not far below it).
    assert simulated_power(n, base, mde, flip, trials=400, seed=2) >= 0.72


def test_mde_shrinks_with_n_and_grows_with_background_flips() -> None:
    ups = [mde_paired(n, 0.2, 0.05) for n in (24, 40, 50, 100)]
    assert all(u is not None for u in ups) and ups == sorted(ups, reverse=True) and ups[0] > ups[-1]
    assert mde_paired(50, 0.2, 0.0) < mde_paired(50, 0.2, 0.05) < mde_paired(50, 0.2, 0.15)  # type: ignore[operator]
    # The normal approximation agrees to a few points where it is valid (not too few discordant pairs).
    assert abs(mde_normal(100, 0.05) - mde_paired(100, 0.2, 0.05)) < 0.04  # type: ignore[operator]


def test_no_room_means_no_detectable_change() -> None:
    assert mde_paired(10, 0.2, 0.05) is None  # 10 prompts: nothing reaches 80% power
    assert mde_paired(50, 1.0, 0.0) is None  # a base that always complies cannot rise
    assert mde_paired(50, 0.1, 0.05, direction="decrease") is None  # 0.05 of room to fall
    s = power_statement(50, 0.1)
    assert s["mde_increase"] is not None and s["mde_decrease"] is None and "none (room 0.05)" in str(s["text"])


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="n must be"):
        mde_paired(0, 0.2)
    with pytest.raises(ValueError, match="base_rate"):
        mde_paired(50, 1.5)
    with pytest.raises(ValueError, match="does not fit"):
        power_paired(50, 0.9, 0.5, 0.05)


@pytest.mark.parametrize(("effect", "seeds", "alpha"), [(1.0, 3, 0.05), (2.5, 3, 0.05 / 6), (0.5, 10, 0.05),
                                                       (1.5, 5, 0.001)])
def test_t_power_is_the_noncentral_t_tail(effect: float, seeds: int, alpha: float) -> None:
    df, lam = seeds - 1, effect * math.sqrt(seeds)
    c = t_dist.ppf(1 - alpha / 2, df)
    ref = nct.sf(c, df, lam) + nct.cdf(-c, df, lam)
    assert t_power(effect, seeds, alpha) == pytest.approx(ref, abs=1e-6)


def test_seed_power_grows_with_seeds_and_falls_with_tau_and_smaller_alpha() -> None:
    psi = 0.15
    p = [power_seeds(50, s, 0.2, psi, 0.05) for s in (2, 3, 5, 10)]
    assert p == sorted(p) and p[0] < p[-1]
    assert power_seeds(50, 5, 0.2, psi, 0.10) < power_seeds(50, 5, 0.2, psi, 0.0)
    assert power_seeds(50, 5, 0.2, psi, 0.05, alpha=0.05 / 6) < power_seeds(50, 5, 0.2, psi, 0.05)
    # One run's change varies by τ² + σ²/n, the seed-averaged prompt mean by (shared + σ²/S)/n, σ² = ψ − Δ².
    v_run, v_p = seed_parts(100, 4, 0.1, 0.2, 0.05, shared=0.01)
    assert v_run == pytest.approx(0.05 ** 2 + 0.19 / 100) and v_p == pytest.approx((0.01 + 0.19 / 4) / 100)
    mde = mde_seeds(315, 5, psi, 0.05, alpha=0.05 / 6)
    assert mde is not None and power_seeds(315, 5, mde, psi, 0.05, 0.05 / 6) >= 0.8
    assert power_seeds(315, 5, mde - 0.005, psi, 0.05, 0.05 / 6) < 0.8


def test_seed_plan_is_the_fewest_seeds_that_detect_the_change() -> None:
    plan = seed_plan(0.10, 0.15, 0.05, alpha=0.05 / 6)
    assert plan is not None
    s, n = plan
    assert power_seeds(n, s, 0.10, 0.15, 0.05, 0.05 / 6) >= 0.8
    smaller = [x for x in PLAN_SEEDS if x < s]
    # With the seeds just below it, not even the largest prompt count on the grid reaches the power.
    assert not smaller or power_seeds(max(PLAN_PROMPTS), smaller[-1], 0.10, 0.15, 0.05, 0.05 / 6) < 0.8
    assert seed_plan(0.10, 0.15, 0.5, alpha=1e-6) is None  # τ five times the change: nothing on the grid


@pytest.mark.parametrize(("n", "seeds", "delta", "tau"), [(100, 5, 0.15, 0.05), (315, 3, 0.10, 0.02),
                                                        (50, 10, 0.10, 0.0)])
def test_seed_power_bounds_the_real_test_simulated(n: int, seeds: int, delta: float, tau: float) -> None:
    """The analytic power of the condition's test against stats.seed_level on simulated runs (base labels
    at 0.3, each run's change N(Δ, τ²) on top of 5% of prompts flipping each way, the benchmark's model):
    the product of the two tests' powers is a lower bound, the smaller of them an upper one."""
    rng = np.random.default_rng(3)
    trials, hits, shared, psi = 600, 0, [], []
    for _ in range(trials):
        base = (rng.random(n) < 0.3).astype(float)
        runs = []
        for _ in range(seeds):
            dl = rng.normal(delta, tau)
            u = rng.random(n)
            up, down = (0.05 + max(dl, 0)) / 0.7, (0.05 + max(-dl, 0)) / 0.3
            runs.append(np.where(base == 0, (u < up).astype(float), np.where(u < down, 0.0, 1.0)) - base)
        avg = np.mean(runs, axis=0)
        se = float(avg.std(ddof=1) / math.sqrt(n))
        hits += seed_level([float(r.mean()) for r in runs], se, n).p <= 0.05
        psi.append(np.mean([np.mean(r != 0) for r in runs]))
        shared.append(max(0.0, n * se * se - (psi[-1] - delta ** 2) / seeds))
    low = power_seeds(n, seeds, delta, float(np.mean(psi)), tau, 0.05, float(np.mean(shared)))
    sim, tol = hits / trials, 3 * math.sqrt(0.25 / trials)
    assert low - tol <= sim, (sim, low)
    v_run, _ = seed_parts(n, seeds, delta, float(np.mean(psi)), tau, float(np.mean(shared)))
    assert sim <= t_power(delta / math.sqrt(v_run), seeds, 0.05) + tol + 0.03, sim  # the t over seeds alone
