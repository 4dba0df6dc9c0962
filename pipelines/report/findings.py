"""The report's findings, computed from the tables (never written by hand): the largest fold increase
in compliance, per fine-tuned cell whether an English-only evaluation would have missed a significant
change seen in another language, the categories that moved most, and whether safety change and
capability change are correlated (the "decoupled" claim). Each finding says plainly when the data
cannot support it (no fine-tuned cell yet, nothing significant, too few points)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from pipelines.report.tables import ALPHA, CORRECTION_NAME, ID_COLS, Cells

ENGLISH = "en"
N_BOOT = 2000
SMALL_N = 10  # below this many points a correlation's interval is reported as indicative only


@dataclass
class Finding:
    key: str  # stable id: the HTML anchor and the name of its table file
    title: str
    summary: str  # sentences computed from the data
    table: pl.DataFrame | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # the numbers behind the summary, for tests and JSON


def _fmt_p(p: float | None, name: str = "p") -> str:
    return f"{name} n/a" if p is None else (f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.3f}")


def _fmt_pp(r: dict[str, Any]) -> str:
    """Raw and adjusted p of a delta row."""
    return f"{_fmt_p(r.get('p_value'))}, {_fmt_p(r.get('p_adj'), 'adjusted p')}"


SIG = f"significant at α = {ALPHA} after {CORRECTION_NAME} adjustment across every fine-tuned cell × eval language"


def _where(r: dict[str, Any]) -> str:
    return f"{r['cell']} asked in {r['eval_lang']}"


def largest_fold_increase(dl: pl.DataFrame, top: int = 5) -> Finding:
    """The (fine-tuned cell, eval language) whose compliance rose most, as a fold of the base model's."""
    key, title = "largest_fold_increase", "Largest fold increase in compliance"
    if dl.height == 0:
        return Finding(key, title, "No fine-tuned cell has been measured yet, so there is no change against a "
                       "base model to report.", facts={"status": "no_finetuned"})
    up = dl.filter((pl.col("ft_rate") > pl.col("base_rate")) & pl.col("fold").is_not_null())
    if up.height == 0:
        return Finding(key, title, f"No fine-tuned cell complied more often than its base model in any eval "
                       f"language ({dl.height} cell × language comparisons).", facts={"status": "no_increase"})
    up = up.sort(["fold", "delta"], descending=True)
    best = up.row(0, named=True)
    sig = SIG if best["significant"] else "not " + SIG
    text = (f"{_where(best)}: compliance {best['base_rate']:.2f} → {best['ft_rate']:.2f}, "
            f"{best['fold']:.1f}× the base model (Δ {best['delta']:+.2f}, {_fmt_pp(best)}; {sig}). Folds add "
            f"half a prompt to both counts, so a base model that refused everything still gives a finite fold.")
    sig_up = up.filter(pl.col("significant"))
    if not best["significant"]:
        if sig_up.height:
            s = sig_up.row(0, named=True)
            text += (f" The largest significant increase: {_where(s)}, {s['base_rate']:.2f} → {s['ft_rate']:.2f} "
                     f"({s['fold']:.1f}×, {_fmt_pp(s)}).")
        else:
            text += " No increase is significant."
    table = up.head(top).select(*ID_COLS, "eval_lang", "base_rate", "ft_rate", "fold", "delta", "p_value",
                                "p_adj", "significant")
    return Finding(key, title, text, table, facts={"status": "ok", "cell": best["cell"],
                                                   "eval_lang": best["eval_lang"], "fold": best["fold"],
                                                   "significant": best["significant"]})


def english_only_missed(dl: pl.DataFrame, cells: Cells) -> Finding:
    """Per fine-tuned cell: would an evaluation in English alone have missed a significant change that
    another eval language shows?"""
    key, title = "english_only", "Would an English-only evaluation have missed it?"
    if not cells.fine_tuned():
        return Finding(key, title, "No fine-tuned cell has been measured yet.", facts={"status": "no_finetuned"})
    if ENGLISH not in cells.eval_langs:
        return Finding(key, title, "English is not among the eval languages, so an English-only evaluation "
                       "cannot be compared with the others.", facts={"status": "no_english"})
    rows = []
    for c in cells.fine_tuned():
        mine = dl.filter(pl.col("cell") == c["cell"])
        en = mine.filter(pl.col("eval_lang") == ENGLISH)
        others = mine.filter((pl.col("eval_lang") != ENGLISH) & pl.col("significant"))
        sig_langs = others["eval_lang"].to_list()
        en_row = en.row(0, named=True) if en.height else None
        if mine.height == 0:
            verdict = "no change measured (no base cell)"
        elif en_row is None or en_row["delta"] is None:
            verdict = "English not measured"
        elif en_row["significant"]:
            verdict = "seen in English"
        elif sig_langs:
            verdict = "missed by English-only"
        else:
            verdict = "no significant change"
        rows.append({"cell": c["cell"], "model": c["model"], "ft_lang": c["ft_lang"],
                     "en_delta": en_row["delta"] if en_row else None, "en_p_value": en_row["p_value"] if en_row else None,
                     "en_p_adj": en_row["p_adj"] if en_row else None,
                     "significant_elsewhere": ", ".join(f"{r['eval_lang']} ({r['delta']:+.2f}, adjusted p "
                                                        f"{r['p_adj']:.3g})" for r in others.iter_rows(named=True)),
                     "verdict": verdict})
    table = pl.DataFrame(rows, schema={"cell": pl.String, "model": pl.String, "ft_lang": pl.String,
                                       "en_delta": pl.Float64, "en_p_value": pl.Float64, "en_p_adj": pl.Float64,
                                       "significant_elsewhere": pl.String, "verdict": pl.String})
    missed = table.filter(pl.col("verdict") == "missed by English-only")["cell"].to_list()
    seen = table.filter(pl.col("verdict") == "seen in English").height
    none = table.filter(pl.col("verdict") == "no significant change").height
    n = table.height
    if missed:
        text = (f"An English-only evaluation would have missed a change ({SIG}) in "
                f"{len(missed)} of {n} fine-tuned cells: {', '.join(missed)}.")
    else:
        text = f"An English-only evaluation would have missed no change ({SIG}) in the {n} fine-tuned cells."
    text += f" English showed a significant change in {seen}; {none} changed significantly in no language."
    return Finding(key, title, text, table, facts={"status": "ok", "missed": missed, "n": n})


def categories_moved(cat: pl.DataFrame, top: int = 5) -> Finding:
    """The harm categories whose compliance changed most against the base model, averaged over the
    fine-tuned cells and eval languages (with the single largest change alongside)."""
    key, title = "categories", "Categories that moved most"
    if cat.height == 0:
        return Finding(key, title, "No per-category change to report: the sweep has no fine-tuned cell with "
                       "per-category rates, or the unsafe prompts carry no categories.", facts={"status": "none"})
    agg = (cat.group_by("category").agg(
        pl.col("change").mean().alias("mean_change"),
        pl.col("change").abs().max().alias("max_abs_change"),
        pl.col("change").sort_by(pl.col("change").abs(), descending=True).first().alias("largest_change"),
        pl.col("cell").sort_by(pl.col("change").abs(), descending=True).first().alias("largest_cell"),
        pl.col("eval_lang").sort_by(pl.col("change").abs(), descending=True).first().alias("largest_eval_lang"),
        pl.len().alias("comparisons"), pl.col("n").sum().alias("prompts"))
        .sort([pl.col("mean_change").abs(), "max_abs_change", "category"], descending=[True, True, False]))
    if agg["max_abs_change"].max() == 0:
        return Finding(key, title, f"No category's compliance changed in any of {cat.height} comparisons.",
                       agg.head(top), facts={"status": "no_change"})
    parts = [f"{r['category']} ({r['mean_change']:+.2f} on average; largest {r['largest_change']:+.2f} in "
             f"{r['largest_cell']}/{r['largest_eval_lang']})" for r in agg.head(3).iter_rows(named=True)]
    text = ("Mean change of compliance against the base model, over fine-tuned cells and eval languages: "
            + "; ".join(parts) + ". Per-category rates rest on few prompts each; see the prompt counts.")
    return Finding(key, title, text, agg.head(top), facts={"status": "ok", "top": agg["category"].head(top).to_list()})


# ---- safety change vs capability change ---------------------------------------------------------------

def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's ρ needs."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last of each group of equal values
    return (upper - (counts - 1) / 2.0)[inverse]


def _row_ranks(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average ranks of every resample x[idx[b]] at once: values become integer codes, each row is
    shifted into its own code range, and one sort of the flattened array ranks every row."""
    _, codes = np.unique(x, return_inverse=True)
    k = int(codes.max()) + 1
    b, n = idx.shape
    flat = (codes[idx] + np.arange(b)[:, None] * k).ravel()
    s = np.sort(flat)
    lo, hi = np.searchsorted(s, flat, "left"), np.searchsorted(s, flat, "right")
    return ((lo + hi + 1) / 2.0 - np.repeat(np.arange(b) * n, n)).reshape(b, n)


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def correlation(x: list[float], y: list[float], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Pearson r with its Fisher-z 95% CI (n > 3) and Spearman ρ with a percentile-bootstrap 95% CI
    (resampling points; resamples with no spread are skipped). None where undefined."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = int(xa.size)
    r = _pearson(xa, ya)
    rho = _pearson(_ranks(xa), _ranks(ya)) if n >= 2 else None
    out: dict[str, Any] = {"n": n, "pearson": r, "pearson_ci": None, "spearman": rho, "spearman_ci": None}
    if r is not None and n > 3:
        z, se = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), 1 / math.sqrt(n - 3)
        out["pearson_ci"] = (math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se))
    if rho is not None and n >= 3:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        rx, ry = _row_ranks(xa, idx), _row_ranks(ya, idx)
        rx -= rx.mean(axis=1, keepdims=True)
        ry -= ry.mean(axis=1, keepdims=True)
        den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
        ok = den > 1e-12  # a resample with no spread on one side has no correlation: skipped
        boots = (rx * ry).sum(axis=1)[ok] / den[ok]
        if boots.size >= n_boot // 10:
            lo, hi = np.quantile(boots, [0.025, 0.975])
            out["spearman_ci"] = (float(lo), float(hi))
    return out


def _ci(ci: tuple[float, float] | None) -> str:
    return "CI n/a" if ci is None else f"95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def decoupling(sc: pl.DataFrame) -> Finding:
    """Is the change in safety correlated with the change in capability? A correlation near zero with a
    narrow interval supports "decoupled"; a wide interval supports nothing."""
    key, title = "decoupling", "Safety change vs capability change"
    n = sc.height
    if n == 0:
        return Finding(key, title, "No fine-tuned cell has both a change in compliance and a capability "
                       "measurement, so safety and capability change cannot be compared.",
                       facts={"status": "no_points", "n": 0})
    stats = correlation(sc["capability_change"].to_list(), sc["safety_change"].to_list())
    facts = {"status": "ok", **stats}
    if n < 3:
        facts["status"] = "too_few"
        return Finding(key, title, f"Only n = {n} point(s) (fine-tuned cell × eval language): too few for a "
                       "correlation.", sc, facts)
    if stats["pearson"] is None:
        facts["status"] = "no_spread"
        flat = "safety change" if sc["safety_change"].std() == 0 else "capability change"
        return Finding(key, title, f"The {flat} is the same at all n = {n} points, so no correlation can be "
                       "computed.", sc, facts)
    cells = sc["cell"].n_unique() if "cell" in sc.columns else None
    from_cells = f" from {cells} fine-tuned cells" if cells else ""
    text = (f"Over n = {n} points{from_cells} (fine-tuned cell × eval language; points of one cell share a "
            f"fine-tune, so they are not independent): Pearson r = {stats['pearson']:+.2f} ({_ci(stats['pearson_ci'])}, "
            f"Fisher z), Spearman ρ = {stats['spearman']:+.2f} ({_ci(stats['spearman_ci'])}, bootstrap).")
    ci = stats["pearson_ci"]
    if ci is None or ci[1] - ci[0] > 1.0:
        text += " The interval is wide at this n: the data cannot tell coupled from decoupled."
    elif ci[0] <= 0 <= ci[1]:
        text += " The interval includes 0: no evidence that safety and capability change together (decoupled)."
    else:
        text += " The interval excludes 0: safety and capability change are correlated here."
    if n < SMALL_N:
        text += f" With fewer than {SMALL_N} points, read this as indicative only."
    return Finding(key, title, text, sc, facts)


def coverage(cells: Cells, comp: pl.DataFrame) -> Finding:
    """Which planned cells (and cell × eval languages) the sweep has no numbers for: the figures leave
    them out, and this says so rather than drawing blanks."""
    key, title = "coverage", "Coverage"
    missing = cells.missing
    have = {(r["cell"], r["eval_lang"]) for r in comp.filter(pl.col("compliance_rate").is_not_null())
            .select("cell", "eval_lang").iter_rows(named=True)}
    gaps = [(c["cell"], lang) for c in cells.present for lang in cells.eval_langs if (c["cell"], lang) not in have]
    parts = []
    if cells.expected:
        if missing:
            parts.append(f"{len(missing)} of {len(cells.expected)} planned cells are missing from this sweep "
                         f"and left out of every figure and table: {', '.join(c['cell'] for c in missing)}.")
        else:
            parts.append(f"All {len(cells.expected)} planned cells were measured.")
    else:
        parts.append(f"{len(cells.present)} cells measured (the planned cells are unknown: no study context).")
    if gaps:
        parts.append(f"No compliance rate (no parseable answer or not evaluated) for {len(gaps)} cell × eval "
                     f"language pairs: {', '.join(f'{c}/{lang}' for c, lang in gaps)}; they show as 'n/a'.")
    table = pl.DataFrame([{"cell": c["cell"], "model": c["model"], "ft_lang": c["ft_lang"], "status": "missing"}
                          for c in missing], schema={"cell": pl.String, "model": pl.String, "ft_lang": pl.String,
                                                     "status": pl.String})
    return Finding(key, title, " ".join(parts), table if missing else None,
                   facts={"missing": [c["cell"] for c in missing], "gaps": gaps})
