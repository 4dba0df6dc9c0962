"""Power of the study's tests. Two levels, as the report tests them (pipelines/report/tables.py):

One fine-tuning run against its base (`power_paired`, `mde_paired`): for n prompts per eval language, the
smallest change in compliance that the run's exact McNemar test (stats.mcnemar_exact) detects at level α.
Each prompt is answered by the base model and the fine-tuned one; a label is 1 (complies) or 0. The tuned
model turns a base refusal into compliance with probability p01 and a compliance into a refusal with
p10; the change is Δ = p01 − p10. Fine-tuning pushes one way (Δ) on top of a background of flips both ways
(`flip` per prompt: greedy decoding of a small model flips some answers under any weight change): for an
increase p01 = Δ + flip and p10 = flip. A flip cannot exceed the room the base leaves: p01 ≤ 1 − base rate
and p10 ≤ base rate. Given D discordant pairs, the number k of increases is Binomial(D, 1/2) under H0;
`power_paired` sums the exact power over D and k, `mde_normal` is the textbook normal approximation
(Connor 1987) for a cross-check, `simulated_power` runs the real test on simulated pairs.

A condition across its seeds (`power_seeds`, `mde_seeds`), the test the findings use (stats.seed_level):
the per-seed changes are N(Δ, τ² + σ²/n) — τ the between-seed SD, σ² = ψ − Δ² with ψ the share of
prompts that move either way (the measured discordance) — and the test rejects when both the t over
seeds (S − 1 df) and the t with the prompt SE of the seed-averaged differences added (Welch–Satterthwaite
df) reject; each power is integrated over the χ² of the seeds' spread (`_t_power`, `seed_parts`). `seed_plan` says how many prompts and seeds detect a given change."""

from __future__ import annotations

import math
from functools import cache
from statistics import NormalDist
from typing import Literal

import numpy as np

from pipelines.evaluate.stats import paired_test, t_quantile, welch_df

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
                    trials: int = 400, seed: int = 0) -> float:
    """Share of `trials` simulated studies in which `paired_test` (the real exact test) gives
    p ≤ α: base labels Bernoulli(base_rate), then each flipped with p01 / (1 − base_rate) from 0 and
    p10 / base_rate from 1, so that the flip probabilities per prompt are p01 and p10."""
    p01, p10 = flip_rates(delta, base_rate, flip)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        base = (rng.random(n) < base_rate).astype(float)
        u = rng.random(n)
        up = (base == 0) & (u < (p01 / (1 - base_rate) if base_rate < 1 else 0.0))
        down = (base == 1) & (u < (p10 / base_rate if base_rate > 0 else 0.0))
        tuned = np.where(up, 1.0, np.where(down, 0.0, base))
        _, p = paired_test(base, tuned)
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

    text = (f"one run, n={n}, base compliance {base_rate:.2f}: its exact test detects (α={alpha:.2g}, power "
            f"{power:.0%}) an increase of "
            f"≥{show(up, max_change(base_rate, flip, 'increase'))} or a decrease of "
            f"≥{show(down, max_change(base_rate, flip, 'decrease'))}, assuming {flip:.0%} of prompts flip "
            "the other way")
    return {"n": n, "base_rate": base_rate, "flip": flip, "alpha": alpha, "power": power,
            "mde_increase": up, "mde_decrease": down, "text": text}


# ---- a condition across its seeds: the t over seeds ---------------------------------------------------

def _phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2))


def _t_power(delta: float, a: float, b: float, df: float, alpha: float, overlap: float = 0.0,
             df_a: float | None = None) -> float:
    """Power of |mean| / √(â + b) > c (c Student's 1 − α/2 quantile on df) when the mean is
    N(Δ, a + b − overlap) — the test's SE² counts `overlap` twice — â = a·χ²_k/k is estimated (the spread
    over seeds, k = df_a, df by default) and b is known (the prompt SE², estimated on hundreds of
    prompts): integrated over the χ² on a log grid. With b = overlap = 0 it is the noncentral t."""
    c, k_a = t_quantile(1 - alpha / 2, df), df if df_a is None else df_a
    v = np.exp(np.linspace(math.log(1e-10), math.log(k_a + 40 * math.sqrt(k_a) + 200), 6000))
    # χ²_k density times v (the log-grid Jacobian), finite at 0 for every k ≥ 1.
    w = np.exp((k_a / 2) * np.log(v) - v / 2 - (k_a / 2) * math.log(2) - math.lgamma(k_a / 2))
    sigma, k = math.sqrt(max(a + b - overlap, 1e-300)), c * np.sqrt(a * v / k_a + b)
    tail = _phi((abs(delta) - k) / sigma) + _phi((-abs(delta) - k) / sigma)
    x = np.log(v)
    return float(np.sum((w * tail)[1:] + (w * tail)[:-1]) / 2 * (x[1] - x[0]))


def t_power(effect: float, seeds: int, alpha: float) -> float:
    """Power of the two-sided one-sample t-test on `seeds` values when the true mean is `effect` standard
    deviations (S − 1 df, noncentrality effect·√S)."""
    return _t_power(effect * math.sqrt(seeds), 1.0, 0.0, seeds - 1, alpha) if seeds > 1 else float("nan")


def seed_parts(n: int, seeds: int, delta: float, discordance: float, tau: float,
               shared: float = 0.0) -> tuple[float, float]:
    """(variance of one run's change, prompt SE² of the seed-averaged differences) under the module's
    model: τ² + σ²/n and (shared + σ²/S)/n — σ² = ψ − Δ² a run's per-prompt variance (ψ at least |Δ|),
    `shared` the variance across prompts of what the runs share (the base's answers: report/summary.py
    measures it)."""
    sigma2 = max(max(discordance, abs(delta)) - delta * delta, 0.0)
    return tau * tau + sigma2 / n, (shared + sigma2 / seeds) / n


def power_seeds(n: int, seeds: int, delta: float, discordance: float, tau: float, alpha: float = 0.05,
                shared: float = 0.0) -> float:
    """Power of the condition's test (stats.seed_level: the t over seeds and the t with the prompt SE
    added must both reject) for a true change `delta`: the product of the two powers, a lower bound since
    the two are positively associated. The seed-averaged mean varies by τ²/S + σ²/(nS) + shared/n in
    truth; the t over seeds sees the first two, the other t counts σ²/(nS) twice."""
    v_run, v_p = seed_parts(n, seeds, delta, discordance, tau, shared)
    if seeds < 2 or v_run <= 0:
        return float("nan") if seeds < 2 else 1.0
    a, df = v_run / seeds, seeds - 1
    p_t = _t_power(delta, a, 0.0, df, alpha, overlap=-shared / n)
    p_sum = _t_power(delta, a, v_p, welch_df(a, df, v_p, n - 1), alpha, overlap=v_p - shared / n, df_a=df)
    return p_t * p_sum


def mde_seeds(n: int, seeds: int, discordance: float, tau: float, alpha: float = 0.05, power: float = 0.80,
              step: float = 0.005, shared: float = 0.0) -> float | None:
    """The smallest |Δ| (grid of `step`, up to 1) the t over seeds detects with `power`; None if none."""
    for i in range(1, int(1 / step) + 1):
        if power_seeds(n, seeds, i * step, discordance, tau, alpha, shared) >= power:
            return round(i * step, 6)
    return None


PLAN_SEEDS = (2, 3, 5, 8, 10, 15, 20, 30)
PLAN_PROMPTS = (50, 100, 200, 315, 500, 1000)


def seed_plan(delta: float, discordance: float, tau: float, alpha: float = 0.05, power: float = 0.80,
              shared: float = 0.0) -> tuple[int, int] | None:
    """(seeds, prompts) — the fewest seeds, then the fewest prompts, on the grids above — whose t over seeds
    detects `delta` with `power`; None when even the largest do not."""
    for s in PLAN_SEEDS:
        for n in PLAN_PROMPTS:
            if power_seeds(n, s, delta, discordance, tau, alpha, shared) >= power:
                return s, n
    return None
