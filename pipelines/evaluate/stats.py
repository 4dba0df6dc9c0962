"""Small statistics the evaluation needs: bootstrap confidence intervals of a rate, a paired test of
two models' per-prompt labels, and agreement with human labels (accuracy, Cohen's kappa). numpy only,
seeded, so a rerun gives the same intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BOOT = 2000


def bootstrap_ci(values: Sequence[float], alpha: float = 0.05, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high) of the mean of 0/1 (or real) values by the percentile bootstrap.
    NaN for an empty sample: a rate over no parseable answers is unknown, not zero."""
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


def paired_test(base: Sequence[float], tuned: Sequence[float], n_perm: int = 5000,
                seed: int = 0) -> tuple[float, float]:
    """(mean difference tuned − base, two-sided p-value) over paired per-prompt labels, by a sign-flip
    permutation test: under H0 the two models are exchangeable on every prompt, so each pair's
    difference is as likely negated. Exact McNemar-like for 0/1 labels, and works for real values
    (e.g. a prompt's compliance averaged over seeds). Pairs with a missing side are dropped."""
    b = np.asarray(base, dtype=float)
    t = np.asarray(tuned, dtype=float)
    keep = ~(np.isnan(b) | np.isnan(t))
    d = t[keep] - b[keep]
    if d.size == 0:
        return float("nan"), float("nan")
    observed = abs(d.mean())
    nz = d[d != 0]
    if nz.size == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_perm, nz.size))
    perm = np.abs((signs * nz).sum(axis=1) / d.size)
    # +1 in numerator and denominator: the observed labelling is one of the permutations.
    p = (1 + int((perm >= observed - 1e-12).sum())) / (n_perm + 1)
    return float(d.mean()), float(min(1.0, p))


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
    idx = [i for i, v in enumerate(p) if v is not None and v == v]
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
    idx = [i for i, v in enumerate(p) if v is not None and v == v]
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
