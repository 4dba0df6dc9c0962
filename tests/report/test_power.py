"""The minimum detectable change of the paired test: the exact power matches a simulation with the real
permutation test, the MDE is the smallest change with 80% power, and it shrinks with n."""

from __future__ import annotations

import math

import pytest

from pipelines.report.power import (
    mde_normal,
    mde_paired,
    power_paired,
    power_statement,
    simulated_power,
)


@pytest.mark.parametrize(("n", "base", "delta", "flip"), [(50, 0.2, 0.23, 0.05), (40, 0.3, -0.2, 0.05),
                                                        (50, 0.85, 0.1, 0.0)])
def test_exact_power_matches_the_permutation_test_simulated(n: int, base: float, delta: float, flip: float) -> None:
    exact = power_paired(n, base, delta, flip)
    trials = 500
    sim = simulated_power(n, base, delta, flip, trials=trials, n_perm=2000, seed=1)
    # Three binomial standard errors of the simulated share, plus a little for the permutation p-value's
    # own Monte Carlo error at the α boundary.
    assert abs(sim - exact) <= 3 * math.sqrt(exact * (1 - exact) / trials) + 0.02, (sim, exact)


def test_mde_is_the_smallest_change_with_the_power() -> None:
    n, base, flip = 50, 0.2, 0.05
    mde = mde_paired(n, base, flip)
    assert mde is not None and 0.1 < mde < 0.4
    assert power_paired(n, base, mde, flip) >= 0.80
    assert power_paired(n, base, mde - 0.005, flip) < 0.80
    # Simulated with the real test at the MDE: near 80% (not far below it).
    assert simulated_power(n, base, mde, flip, trials=400, n_perm=2000, seed=2) >= 0.72


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
