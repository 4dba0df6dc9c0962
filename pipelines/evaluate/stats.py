"""Small statistics the evaluation needs, numpy and the standard library only (scipy is a test-time
reference, not a dependency):

- rates: the Wilson score interval (never [0, 0] at 0/n, and it keeps its coverage at the laptop's n,
  where the percentile bootstrap under-covers); the bootstrap stays for real-valued means;
- one fine-tuning run against its base, paired on prompts: the exact McNemar test (a binomial on the
  discordant pairs) and Newcombe's paired interval for the change;
- paired real-valued differences (a prompt's label averaged over seeds, a change in one language minus
  the change in English): the exact sign-flip distribution, by convolution;
- a condition (model, fine-tune language, epochs) across its seeds: the mean of the per-seed changes
  with a t-interval over seeds (`seed_level`);
- multiplicity (Holm, Benjamini–Hochberg) and agreement with human labels (accuracy, Cohen's κ).

Every exact p-value is summed in log space, so it reaches 1e-100 and below instead of being floored by a
permutation count (5,000 draws floor a p at 2e-4, which no Holm step over thousands of tests passes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

N_BOOT = 2000
Z95 = 1.959963984540054
MAX_LATTICE = 720  # common denominators tried for real-valued differences (lcm of 1..6 seeds is 60)


def bootstrap_ci(values: Sequence[float], alpha: float = 0.05, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high) of the mean of real values by the percentile bootstrap (for 0/1 values
    use `rate_ci`). NaN for an empty sample: a rate over no parseable answers is unknown, not zero."""
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


# ---- rates --------------------------------------------------------------------------------------------

def _z(alpha: float) -> float:
    return Z95 if alpha == 0.05 else normal_quantile(1 - alpha / 2)


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """(k/n, low, high): the Wilson score interval of a binomial rate; NaN for n = 0."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    z, p = _z(alpha), k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 (or n) the bound is exactly 0 (1); rounding must not leave it a hair inside.
    return p, 0.0 if k == 0 else max(0.0, mid - half), 1.0 if k == n else min(1.0, mid + half)


def is_number(v: object) -> bool:
    """A value that counts: not None and not NaN (NaN, a rate over nothing, is the one value unequal to itself)."""
    return v is not None and v == v


def rate_ci(values: Sequence[float | None], alpha: float = 0.05) -> tuple[float, float, float]:
    """(rate, low, high) of 0/1 values by Wilson; missing values (None, NaN) are left out."""
    x = [float(v) for v in values if is_number(v)]
    return wilson_ci(int(round(sum(x))), len(x), alpha)


# ---- one run against its base: exact McNemar and Newcombe's interval ----------------------------------

@dataclass(frozen=True)
class PairCounts:
    """Pairs of (base, tuned) 0/1 labels: both 1, up (0 → 1), down (1 → 0), both 0."""

    both: int
    up: int
    down: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.up + self.down + self.neither

    @property
    def delta(self) -> float:
        return (self.up - self.down) / self.n if self.n else float("nan")

    @property
    def discordance(self) -> float:
        """The share of prompts whose label moved either way (ψ of the power calculation)."""
        return (self.up + self.down) / self.n if self.n else float("nan")


def pair_counts(base: Sequence[float], tuned: Sequence[float]) -> PairCounts:
    """Counts of the paired 0/1 labels; pairs with a missing side are dropped."""
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    keep = ~(np.isnan(b) | np.isnan(t))
    b, t = b[keep] > 0.5, t[keep] > 0.5
    return PairCounts(int((b & t).sum()), int((~b & t).sum()), int((b & ~t).sum()), int((~b & ~t).sum()))


def _logsumexp(x: np.ndarray) -> float:
    if x.size == 0 or not np.isfinite(x.max()):
        return -math.inf
    m = float(x.max())
    return m + math.log(float(np.exp(x - m).sum()))


def _log_binom_half(n: int) -> np.ndarray:
    """log P(K = k), k = 0..n, for K ~ Binomial(n, 1/2)."""
    k = np.arange(n + 1)
    lg = np.vectorize(math.lgamma)
    return math.lgamma(n + 1) - lg(k + 1) - lg(n - k + 1) - n * math.log(2)


def log_mcnemar_exact(up: int, down: int) -> float:
    """log of the two-sided exact McNemar p-value: given D = up + down discordant pairs, the number
    moving up is Binomial(D, 1/2) under H0; p = P(|2K − D| ≥ |2·up − D|) (scipy's binomtest)."""
    d = up + down
    if d == 0:
        return 0.0
    lp = _log_binom_half(d)
    dev = abs(2 * up - d)
    tail = np.abs(2 * np.arange(d + 1) - d) >= dev
    return min(0.0, _logsumexp(lp[tail]))


def mcnemar_exact(up: int, down: int) -> float:
    return math.exp(log_mcnemar_exact(up, down))


def newcombe_ci(c: PairCounts, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval for the paired difference tuned − base: the two rates' Wilson
    intervals combined with the pairs' correlation φ. Unlike Wald it stays inside [−1, 1] and keeps its
    coverage with few discordant pairs."""
    n = c.n
    if n == 0:
        return float("nan"), float("nan")
    pt, lt, ut = wilson_ci(c.both + c.up, n, alpha)
    pb, lb, ub = wilson_ci(c.both + c.down, n, alpha)
    den = (c.both + c.up) * (c.down + c.neither) * (c.both + c.down) * (c.up + c.neither)
    phi = (c.both * c.neither - c.up * c.down) / math.sqrt(den) if den > 0 else 0.0
    lo = math.sqrt(max(0.0, (pt - lt) ** 2 - 2 * phi * (pt - lt) * (ub - pb) + (ub - pb) ** 2))
    hi = math.sqrt(max(0.0, (ut - pt) ** 2 - 2 * phi * (ut - pt) * (pb - lb) + (pb - lb) ** 2))
    return max(-1.0, c.delta - lo), min(1.0, c.delta + hi)


# ---- real-valued paired differences: the exact sign-flip distribution --------------------------------

def lattice(x: np.ndarray, max_k: int = MAX_LATTICE) -> int:
    """The smallest k with every x·k an integer: differences of labels averaged over S seeds lie on a
    grid of 1/S (1/lcm when seeds left different prompts unparseable)."""
    for k in range(1, max_k + 1):
        if np.all(np.abs(x * k - np.rint(x * k)) < 1e-9):
            return k
    raise ValueError(f"paired differences lie on no grid of 1/k for k ≤ {max_k}; the exact sign-flip test "
                     "needs labels averaged over a few seeds (or give `scale`)")


def log_sign_flip_exact(d: Sequence[float], scale: int | None = None) -> float:
    """log of the two-sided exact sign-flip p-value of paired differences d: under H0 each difference is
    as likely negated, so the sum's null distribution is the convolution of ±|d_i| (computed on the
    integers |d_i|·scale, in log space). p = P(|Σ ε_i |d_i|| ≥ |Σ d_i|). On 0/1 pairs this is exactly
    McNemar's test."""
    x = np.asarray(d, dtype=float)
    x = x[~np.isnan(x)]
    k = scale or lattice(x)
    a = np.rint(np.abs(x) * k).astype(np.int64)
    a = a[a > 0]
    if a.size == 0:
        return 0.0
    total = int(a.sum())
    lp = np.full(total + 1, -math.inf)  # log P(sum of the positively signed |d_i| = t)
    lp[0] = 0.0
    reach = 0
    for ai in a.tolist():
        moved = np.full_like(lp, -math.inf)
        moved[ai:reach + ai + 1] = lp[:reach + 1]
        lp[:reach + ai + 1] = np.logaddexp(lp[:reach + ai + 1], moved[:reach + ai + 1]) - math.log(2)
        reach += ai
    observed = abs(int(np.rint(x * k).sum()))
    tail = np.abs(2 * np.arange(total + 1) - total) >= observed
    return min(0.0, _logsumexp(lp[tail]))


def sign_flip_exact(d: Sequence[float], scale: int | None = None) -> float:
    return math.exp(log_sign_flip_exact(d, scale))


def paired_test(base: Sequence[float], tuned: Sequence[float]) -> tuple[float, float]:
    """(mean difference tuned − base, two-sided exact p-value) over paired per-prompt labels: exact
    McNemar on 0/1 labels, the exact sign-flip test on real ones (e.g. a prompt's compliance averaged
    over seeds). Pairs with a missing side are dropped."""
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    keep = ~(np.isnan(b) | np.isnan(t))
    d = t[keep] - b[keep]
    if d.size == 0:
        return float("nan"), float("nan")
    return float(d.mean()), sign_flip_exact(d)


# ---- a condition across its seeds ---------------------------------------------------------------------

def normal_quantile(q: float) -> float:
    return NormalDist().inv_cdf(q)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (Lentz), as in Numerical Recipes §6.4."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The q-quantile (q > 0.5) of Student's t, by bisection on the tail."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) / 2 > 1 - q else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class SeedLevel:
    """A condition's change against its base across its fine-tuning runs (seeds)."""

    mean: float  # mean of the per-seed changes
    tau: float | None  # between-seed SD of the change (None with one seed)
    se: float | None
    df: float | None
    ci_low: float | None
    ci_high: float | None
    p: float | None
    seeds: int


def welch_df(a: float, df_a: float, b: float, df_b: float) -> float:
    """Welch–Satterthwaite degrees of freedom of a variance a + b whose parts rest on df_a and df_b."""
    den = (a * a / df_a if df_a > 0 else 0.0) + (b * b / df_b if df_b > 0 else 0.0)
    return (a + b) ** 2 / den if den > 0 else max(df_a, 1.0)


def seed_level(changes: Sequence[float], prompt_se: float = 0.0, n: int = 0, alpha: float = 0.05) -> SeedLevel:
    """A condition's change across its seeds: the mean of the per-seed paired changes, established only
    when it holds across runs AND with the prompt sample's noise counted — an intersection-union test,
    p the larger of two t-tests:

    - across runs: the one-sample t over the S per-seed changes (S − 1 df; τ their SD). Why this and not a
      mixed model: every seed is evaluated on the same prompts against the same base, so the design is
      balanced and the per-seed mean change is a sufficient summary of the run effect; with 3 seeds a
      mixed model's variance components and degrees of freedom are unstable. Alone it misses what the
      seeds share (the base's own answers on this sample): up to 17% false positives at α = 0.05 with
      10 seeds and no effect (benchmarks/evaluate/RESULTS-stats.md);
    - with both sources: SE² = s²/S + prompt_se², prompt_se the prompt-sampling SE of the seed-averaged
      differences over n prompts, on Welch–Satterthwaite df. Alone its df estimate, resting on 2 df at
      3 seeds, let 7% through at α = 0.05 and 1% at α = 2e-4.

    Rejecting only when both reject keeps the rate near α in every regime simulated (3 to 10 seeds, τ 0
    to 0.10). The interval is the hull of the two t-intervals. With one seed there is nothing to test
    across runs: mean only (the report says it is one fine-tuning run)."""
    x = np.asarray([c for c in changes if is_number(c)], dtype=float)
    s = int(x.size)
    if s <= 1:
        return SeedLevel(float(x[0]) if s else float("nan"), None, None, None, None, None, None, s)
    tau, mean = float(x.std(ddof=1)), float(x.mean())
    a, b = tau * tau / s, (prompt_se * prompt_se if is_number(prompt_se) else 0.0)
    # Seeds that agree exactly leave only the prompt sample to test by (and nothing, without it).
    tests = [(math.sqrt(a), float(s - 1))] if a > 0 else []
    tests += [(math.sqrt(a + b), welch_df(a, s - 1, b, n - 1))] if a + b > 0 else []
    if not tests:
        return SeedLevel(mean, tau, 0.0, None, None, None, 1.0 if mean == 0 else None, s)
    p = max(t_two_sided_p(mean / se, df) for se, df in tests)
    half = [t_quantile(1 - alpha / 2, df) * se for se, df in tests]
    return SeedLevel(mean, tau, tests[-1][0], tests[-1][1], mean - max(half), mean + max(half), p, s)


def cohen_kappa(truth: Sequence[int], pred: Sequence[int | None]) -> tuple[float, float, int]:
    """(accuracy, Cohen's kappa, n) of binary predictions against human labels. An unparseable
    prediction (None) counts as a disagreement: a judge that cannot answer is not let off."""
    y = np.asarray(truth, dtype=int)
    p = np.asarray([-1 if v is None else int(v) for v in pred], dtype=int)
    n = y.size
    if n == 0:
        return float("nan"), float("nan"), 0
    po = float((y == p).mean())
    pe = sum(float((y == c).mean()) * float((p == c).mean()) for c in (0, 1))
    kappa = (po - pe) / (1 - pe) if pe < 1 else (1.0 if po == 1 else 0.0)
    return po, float(kappa), int(n)


def holm(p: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (family-wise error, valid under any dependence between the
    tests): the k-th smallest of m p-values times (m − k + 1), made monotone, capped at 1. A missing
    p-value stays missing and is not counted in m."""
    idx = [i for i, v in enumerate(p) if is_number(v)]
    out: list[float | None] = [None] * len(p)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p[i])):  # type: ignore[arg-type, return-value]
        running = max(running, min(1.0, (m - rank) * float(p[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def benjamini_hochberg(p: Sequence[float | None]) -> list[float | None]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate, independent or positively dependent
    tests); missing p-values stay missing and are not counted."""
    idx = [i for i, v in enumerate(p) if is_number(v)]
    out: list[float | None] = [None] * len(p)
    m = len(idx)
    running = 1.0
    for rank, i in reversed(list(enumerate(sorted(idx, key=lambda i: p[i]), 1))):  # type: ignore[arg-type, return-value]
        running = min(running, m * float(p[i]) / rank)  # type: ignore[arg-type]
        out[i] = running
    return out


ADJUST = {"holm": holm, "bh": benjamini_hochberg}


def adjust(p: Sequence[float | None], method: str = "holm") -> list[float | None]:
    return ADJUST[method](p)
