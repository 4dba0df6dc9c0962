"""Power of the study's paired test: for n prompts per eval language, the smallest change in compliance
(fine-tuned − base) that `pipelines.evaluate.stats.paired_test` detects at level α with the given power.

The model of the data. Each prompt is answered by the base model and by the fine-tuned one; a label is 1
(complies) or 0 (refuses). The pairs are independent. The tuned model turns a base refusal into compliance
with probability p01 (per prompt) and a base compliance into a refusal with probability p10; the change in
compliance is Δ = p01 − p10. Fine-tuning is assumed to push one way (Δ) on top of a background of flips
both ways, `flip` per prompt (greedy decoding of a small model flips some answers under any weight change):
for an increase p01 = Δ + flip and p10 = flip, for a decrease p10 = |Δ| + flip and p01 = flip. A flip
cannot exceed the room the base leaves: p01 ≤ 1 − base_rate and p10 ≤ base_rate.

The test. On 0/1 labels the sign-flip permutation test is exactly McNemar's conditional test: given the
D discordant pairs, the number k of increases is Binomial(D, 1/2) under H0, and the test rejects when the
two-sided exact p-value P(|2K − D| ≥ |2k − D|) ≤ α. `power_paired` computes its power exactly (a sum over
D and k; the permutation p-value is a Monte Carlo estimate of the same number), `mde_paired` searches Δ on a
grid, and `mde_normal` is the textbook normal approximation (Connor 1987) for a cross-check.
`simulated_power` runs the real paired_test on simulated pairs (tests compare it with `power_paired`)."""

from __future__ import annotations

import math
from functools import cache
from statistics import NormalDist
from typing import Literal

import numpy as np

from pipelines.evaluate.stats import paired_test

Direction = Literal["increase", "decrease"]


def _pmf(n: int, p: float) -> list[float]:
    if p <= 0:
        return [1.0] + [0.0] * n
    if p >= 1:
        return [0.0] * n + [1.0]
    lp, lq = math.log(p), math.log1p(-p)
    return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
            for k in range(n + 1)]


@cache
def _rejects(d: int, alpha: float) -> tuple[bool, ...]:
    """For D discordant pairs: whether k increases (k = 0..D) give a two-sided exact p-value ≤ α."""
    null = _pmf(d, 0.5)
    out = []
    for k in range(d + 1):
        dev = abs(2 * k - d)
        p = sum(q for j, q in enumerate(null) if abs(2 * j - d) >= dev)
        out.append(d > 0 and p <= alpha + 1e-12)
    return tuple(out)


def flip_rates(delta: float, base_rate: float, flip: float) -> tuple[float, float]:
    """(p01, p10) of the model above for a change `delta` (its sign gives the direction). The background
    flips the other way are capped by what the base leaves to flip (none below a base that complies with
    nothing), so the net change stays `delta`."""
    bg = _background(base_rate, flip, "increase" if delta >= 0 else "decrease")
    p01, p10 = (abs(delta) + bg, bg) if delta >= 0 else (bg, abs(delta) + bg)
    if p01 > 1 - base_rate + 1e-12 or p10 > base_rate + 1e-12:
        raise ValueError(f"a change of {delta:+.3f} with {flip:.3f} background flips does not fit a base "
                         f"compliance of {base_rate:.3f} (need p01 ≤ 1 − base rate and p10 ≤ base rate)")
    return p01, p10


def power_paired(n: int, base_rate: float, delta: float, flip: float = 0.05, alpha: float = 0.05) -> float:
    """Probability that the paired test rejects H0 (two-sided, level α) for n prompts."""
    p01, p10 = flip_rates(delta, base_rate, flip)
    psi = p01 + p10
    if psi == 0:
        return 0.0
    up = p01 / psi
    total = 0.0
    for d, pd in enumerate(_pmf(n, psi)):
        if pd < 1e-15:
            continue
        rej = _rejects(d, alpha)
        total += pd * sum(q for k, q in enumerate(_pmf(d, up)) if rej[k])
    return total


def _background(base_rate: float, flip: float, direction: Direction) -> float:
    # Prompts flipping against the change come from those the base labels the other way.
    return min(flip, base_rate if direction == "increase" else 1 - base_rate)


def max_change(base_rate: float, flip: float, direction: Direction) -> float:
    """The largest change the base leaves room for (compliance cannot pass 1 nor fall below 0)."""
    bg = _background(base_rate, flip, direction)
    return max(0.0, (1 - base_rate - bg) if direction == "increase" else (base_rate - bg))


def mde_paired(n: int, base_rate: float, flip: float = 0.05, alpha: float = 0.05, power: float = 0.80,
               direction: Direction = "increase", step: float = 0.005) -> float | None:
    """The smallest |Δ| (on a grid of `step`) whose power is at least `power`; None when even the largest
    change the base rate allows is not detected that often (e.g. a base that already complies with
    everything has no room for an increase)."""
    if n < 1:
        raise ValueError(f"n must be at least 1 (got {n})")
    if not 0 <= base_rate <= 1 or not 0 <= flip <= 1:
        raise ValueError(f"base_rate and flip must lie in [0, 1] (got {base_rate}, {flip})")
    sign = 1.0 if direction == "increase" else -1.0
    top = max_change(base_rate, flip, direction)
    for i in range(1, int(top / step + 1e-9) + 1):
        if power_paired(n, base_rate, sign * i * step, flip, alpha) >= power:
            return round(i * step, 6)
    return None


def mde_normal(n: int, flip: float = 0.05, alpha: float = 0.05, power: float = 0.80) -> float:
    """Normal approximation for McNemar's test (Connor 1987): the Δ solving
    n·Δ² = (z_{1−α/2}·√ψ + z_{power}·√(ψ − Δ²))² with ψ = Δ + 2·flip, by bisection. Ignores the bounds a
    base rate sets and the test's discreteness: an approximation to compare with `mde_paired`."""
    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)

    def gap(delta: float) -> float:
        psi = delta + 2 * flip
        return math.sqrt(n) * delta - (za * math.sqrt(psi) + zb * math.sqrt(max(psi - delta ** 2, 0.0)))

    lo, hi = 1e-9, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
    return hi


def simulated_power(n: int, base_rate: float, delta: float, flip: float = 0.05, alpha: float = 0.05,
                    trials: int = 400, n_perm: int = 2000, seed: int = 0) -> float:
    """Share of `trials` simulated studies in which `paired_test` (the real permutation test) gives
    p ≤ α: base labels Bernoulli(base_rate), then each flipped with p01 / (1 − base_rate) from 0 and
    p10 / base_rate from 1, so that the flip probabilities per prompt are p01 and p10."""
    p01, p10 = flip_rates(delta, base_rate, flip)
    rng = np.random.default_rng(seed)
    hits = 0
    for t in range(trials):
        base = (rng.random(n) < base_rate).astype(float)
        u = rng.random(n)
        up = (base == 0) & (u < (p01 / (1 - base_rate) if base_rate < 1 else 0.0))
        down = (base == 1) & (u < (p10 / base_rate if base_rate > 0 else 0.0))
        tuned = np.where(up, 1.0, np.where(down, 0.0, base))
        _, p = paired_test(base, tuned, n_perm=n_perm, seed=seed + t)
        hits += bool(p <= alpha)
    return hits / trials


def power_statement(n: int, base_rate: float, flip: float = 0.05, alpha: float = 0.05,
                    power: float = 0.80) -> dict[str, float | int | None | str]:
    """What the report prints per eval language: the smallest increase and decrease in compliance the
    paired test detects for this n and base rate, with the assumptions that give them."""
    up = mde_paired(n, base_rate, flip, alpha, power, "increase")
    down = mde_paired(n, base_rate, flip, alpha, power, "decrease")

    def show(x: float | None, room: float) -> str:
        return f"{x:.2f}" if x is not None else f"none (room {room:.2f})"

    text = (f"n={n}, base compliance {base_rate:.2f}: detects (α={alpha:g}, power {power:.0%}) an increase of "
            f"≥{show(up, max_change(base_rate, flip, 'increase'))} or a decrease of "
            f"≥{show(down, max_change(base_rate, flip, 'decrease'))}, assuming {flip:.0%} of prompts flip "
            "the other way")
    return {"n": n, "base_rate": base_rate, "flip": flip, "alpha": alpha, "power": power,
            "mde_increase": up, "mde_decrease": down, "text": text}
