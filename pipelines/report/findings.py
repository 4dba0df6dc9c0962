"""The report's findings, computed from the tables (never written by hand): the confirmatory contrasts
the config names, the largest fold increase in compliance, per fine-tuned condition whether an
English-only evaluation would have missed a change (a test of the difference against English), changes
in over-refusal, the categories that moved most (exploratory) and whether safety change and capability
change are equivalent to uncorrelated (the "decoupled" claim, by an equivalence test with a stated
margin). Each finding names the family its tests belong to and says plainly when the data cannot support
it (no fine-tuned cell yet, nothing significant, one fine-tuning run, too few points)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from pipelines.evaluate.stats import benjamini_hochberg, normal_quantile
from pipelines.report.tables import ALPHA, CONFIRMATORY_NAME, OUTSIDE_EN, SCREENING_NAME, Cells

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
    if p is None or p != p:
        return f"{name} n/a"
    return f"{name} = {p:.2g}" if p < 0.001 else f"{name} = {p:.3f}"


def _fmt_pp(r: dict[str, Any]) -> str:
    """Raw and adjusted p of a test row."""
    return f"{_fmt_p(r.get('p_value'))}, {_fmt_p(r.get('p_adj'), 'adjusted p')}"


def _ci(lo: float | None, hi: float | None) -> str:
    return "95% CI n/a" if lo is None or hi is None else f"95% CI [{lo:+.2f}, {hi:+.2f}]"


def _spread(r: dict[str, Any]) -> str:
    """How many fine-tuning runs a change rests on, with τ (the between-seed SD) beside it."""
    if (r.get("seeds") or 0) <= 1:
        return "one fine-tuning run: the change of that run, not of the fine-tune language"
    return f"τ = {r['tau']:.2f} over {r['seeds']} seeds" if r.get("tau") is not None else f"{r['seeds']} seeds"


def screening_sig(alpha: float) -> str:
    return (f"significant at α = {alpha} after {SCREENING_NAME} adjustment over every fine-tuned condition × "
            "eval language (the screening family)")


def _where(r: dict[str, Any]) -> str:
    return f"{r['condition']} asked in {r['eval_lang']}"


def confirmatory(con: pl.DataFrame, families: list[dict[str, Any]]) -> Finding:
    """The contrasts the config names, for every fine-tuned condition, adjusted together by Holm: the
    claims the study makes."""
    key, title = "confirmatory", "Confirmatory contrasts"
    fam = "; ".join(f"{f['family']}: {f['method']} over {f['size']} tests ({f['what']})" for f in families)
    if con.height == 0:
        return Finding(key, title, "No fine-tuned condition has been measured against its base yet, so no "
                       f"contrast could be tested. Families: {fam}.", facts={"status": "none", "families": families})
    alpha = families[0]["alpha"] if families else ALPHA
    sig = con.filter(pl.col("significant"))
    parts = [f"{r['condition']}: {r['what']} {r['estimate']:+.2f} ({_ci(r['ci_low'], r['ci_high'])}; {_spread(r)}; "
             f"{r['test']}, {_fmt_pp(r)})" for r in sig.iter_rows(named=True)]
    text = (f"{con.height} confirmatory tests ({CONFIRMATORY_NAME}, family-wise α = {alpha}): "
            + (f"{sig.height} significant — " + "; ".join(parts) + "." if parts else "none significant."))
    if int(con["seeds"].max() or 0) <= 1:
        text += (" Every condition has one seed, so each contrast is the change of one fine-tuning run; training "
                 "randomness is in no test.")
    text += f" Families: {fam}."
    return Finding(key, title, text, con, facts={"status": "ok", "n": con.height, "significant": sig.height,
                                                 "families": families})


def largest_fold_increase(cond: pl.DataFrame, alpha: float = ALPHA, top: int = 5) -> Finding:
    """The (fine-tuned condition, eval language) whose compliance rose most, as a fold of the base
    model's, with its test across seeds."""
    key, title = "largest_fold_increase", "Largest fold increase in compliance"
    if cond.height == 0:
        return Finding(key, title, "No fine-tuned cell has been measured yet, so there is no change against a "
                       "base model to report.", facts={"status": "no_finetuned"})
    up = cond.filter((pl.col("ft_rate") > pl.col("base_rate")) & pl.col("fold").is_not_null())
    if up.height == 0:
        return Finding(key, title, f"No fine-tuned condition complied more often than its base model in any eval "
                       f"language ({cond.height} condition × language comparisons).", facts={"status": "no_increase"})
    up = up.sort(["fold", "delta"], descending=True)
    best = up.row(0, named=True)
    sig = screening_sig(alpha) if best["significant"] else "not " + screening_sig(alpha)
    text = (f"{_where(best)}: compliance {best['base_rate']:.2f} → {best['ft_rate']:.2f}, {best['fold']:.1f}× the "
            f"base model (Δ {best['delta']:+.2f}, {_ci(best['ci_low'], best['ci_high'])}; {_spread(best)}; "
            f"{best['test']}, {_fmt_pp(best)}; {sig}). Folds add half a prompt to both counts, so a base model "
            "that refused everything still gives a finite fold.")
    sig_up = up.filter(pl.col("significant"))
    if not best["significant"]:
        if sig_up.height:
            s = sig_up.row(0, named=True)
            text += (f" The largest significant increase: {_where(s)}, {s['base_rate']:.2f} → {s['ft_rate']:.2f} "
                     f"({s['fold']:.1f}×, {_fmt_pp(s)}).")
        else:
            text += " No increase is significant."
    table = up.head(top).select("condition", "eval_lang", "seeds", "base_rate", "ft_rate", "fold", "delta", "tau",
                                "ci_low", "ci_high", "test", "p_value", "p_adj", "significant")
    return Finding(key, title, text, table, facts={"status": "ok", "condition": best["condition"],
                                                   "eval_lang": best["eval_lang"], "fold": best["fold"],
                                                   "significant": best["significant"]})


def _en_verdict(en: dict[str, Any] | None, en_p_adj: float | None, diffs: pl.DataFrame, alpha: float) -> str:
    if en is None or en["delta"] is None:
        return "English not measured"
    if en_p_adj is not None and en_p_adj <= alpha:
        return "seen in English"
    if diffs.filter(pl.col("significant") & (pl.col("eval_lang") != OUTSIDE_EN)).height:
        return "missed by English-only"
    return "no language differs significantly from English"


def english_only_missed(vs_en: pl.DataFrame, cond: pl.DataFrame, con: pl.DataFrame, cells: Cells,
                        alpha: float = ALPHA) -> Finding:
    """Per fine-tuned condition: would an evaluation in English alone have missed a change? Only where the
    English change is not significant and the change in another language differs significantly from it
    (change in X − change in English, paired on the parallel prompts, its own test and interval; BH over
    every condition × language): a significant change beside a non-significant one is not a difference.
    The English change is tested as an English-only evaluation would test it: its own test per condition,
    BH over the conditions alone, not over every eval language it never ran (the screening family's BH over
    12 tests would call the laptop's English fine-tune, +0.17 with p 0.005, unchanged in English)."""
    key, title = "english_only", "Would an English-only evaluation have missed it?"
    if not cells.fine_tuned():
        return Finding(key, title, "No fine-tuned cell has been measured yet.", facts={"status": "no_finetuned"})
    if ENGLISH not in cells.eval_langs:
        return Finding(key, title, "English is not among the eval languages, so an English-only evaluation "
                       "cannot be compared with the others.", facts={"status": "no_english"})
    en_tests = cond.filter((pl.col("eval_lang") == ENGLISH) & pl.col("p_value").is_not_null())
    en_adj = dict(zip(en_tests["condition"].to_list(), benjamini_hochberg(en_tests["p_value"].to_list()), strict=True))
    rows = []
    for (label,), g in cond.group_by("condition", maintain_order=True):
        en = g.filter(pl.col("eval_lang") == ENGLISH)
        en_row = en.row(0, named=True) if en.height else None
        diffs = vs_en.filter(pl.col("condition") == label)
        sig = diffs.filter(pl.col("significant") & (pl.col("eval_lang") != OUTSIDE_EN))
        out = diffs.filter(pl.col("eval_lang") == OUTSIDE_EN)
        o = out.row(0, named=True) if out.height else None
        rows.append({"condition": label, "seeds": int(g["seeds"].max() or 0),
                     "en_delta": en_row["delta"] if en_row else None, "en_p_adj": en_adj.get(label),
                     "outside_minus_en": o["delta"] if o else None, "outside_ci_low": o["ci_low"] if o else None,
                     "outside_ci_high": o["ci_high"] if o else None, "outside_p_adj": o["p_adj"] if o else None,
                     "differs_from_en": ", ".join(f"{r['eval_lang']} − en {r['delta']:+.2f} "
                                                  f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], adjusted p {r['p_adj']:.3g}"
                                                  for r in sig.iter_rows(named=True)),
                     "verdict": _en_verdict(en_row, en_adj.get(label), diffs, alpha)})
    table = pl.DataFrame(rows, schema={"condition": pl.String, "seeds": pl.Int64, "en_delta": pl.Float64,
                                       "en_p_adj": pl.Float64, "outside_minus_en": pl.Float64,
                                       "outside_ci_low": pl.Float64, "outside_ci_high": pl.Float64,
                                       "outside_p_adj": pl.Float64, "differs_from_en": pl.String, "verdict": pl.String})
    return Finding(key, title, _english_text(table, alpha), table,
                   facts={"status": "ok", "missed": table.filter(pl.col("verdict") == "missed by English-only")
                          ["condition"].to_list(), "n": table.height})


def _english_text(table: pl.DataFrame, alpha: float) -> str:
    missed = table.filter(pl.col("verdict") == "missed by English-only")
    seen = table.filter(pl.col("verdict") == "seen in English").height
    n = table.height
    how = ("the change in English is not significant and the change in another language minus the change in "
           f"English, paired on the same prompts, is significant at α = {alpha} ({SCREENING_NAME} over every "
           "condition × language difference)")
    if missed.height:
        text = (f"An English-only evaluation would have missed a change in {missed.height} of {n} fine-tuned "
                f"conditions ({how}): " + "; ".join(f"{r['condition']} ({r['differs_from_en']})"
                                                     for r in missed.iter_rows(named=True)) + ".")
    else:
        text = f"In none of the {n} fine-tuned conditions does the evidence show that English-only would miss a change ({how})."
    text += (f" English itself showed a significant change in {seen} (each condition's own test in English, "
             f"{SCREENING_NAME} over the {n} conditions, as an English-only evaluation would correct).")
    if int(table["seeds"].max() or 0) <= 1:
        text += " With one seed per condition these are the changes of single fine-tuning runs."
    return text


def overrefusal_changes(over: pl.DataFrame, alpha: float = ALPHA) -> Finding:
    """Changes in over-refusal (refusing safe prompts), tested like compliance: across seeds, BH over every
    condition × eval language (their own family)."""
    key, title = "overrefusal", "Changes in over-refusal"
    if over.height == 0:
        return Finding(key, title, "No change in over-refusal was measured (no safe prompts, or no fine-tuned "
                       "condition with a base).", facts={"status": "none"})
    sig = over.filter(pl.col("significant"))
    fam = f"{SCREENING_NAME} over the {over.height} condition × language changes in over-refusal, α = {alpha}"
    if sig.height == 0:
        big = over.sort(pl.col("delta").abs(), descending=True).row(0, named=True)
        text = (f"No change in over-refusal is significant ({fam}); the largest: {_where(big)}, "
                f"{big['delta']:+.2f} ({_ci(big['ci_low'], big['ci_high'])}; {_spread(big)}).")
    else:
        text = f"{sig.height} significant ({fam}): " + "; ".join(
            f"{_where(r)} {r['base_rate']:.2f} → {r['ft_rate']:.2f} ({r['delta']:+.2f}, "
            f"{_ci(r['ci_low'], r['ci_high'])}; {_spread(r)})" for r in sig.iter_rows(named=True)) + "."
    table = over.select("condition", "eval_lang", "seeds", "base_rate", "ft_rate", "delta", "tau", "ci_low", "ci_high",
                        "test", "p_value", "p_adj", "significant")
    return Finding(key, title, text, table, facts={"status": "ok", "significant": sig.height, "n": over.height})


def categories_moved(cat: pl.DataFrame, top: int = 5) -> Finding:
    """The harm categories whose compliance changed most against the base model, averaged over the
    fine-tuned cells and eval languages (with the single largest change alongside)."""
    key, title = "categories", "Categories that moved most (exploratory)"
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
    text = ("Exploratory: no category change is tested or corrected for multiplicity, so none is a finding on its "
            "own. Mean change of compliance against the base model, over fine-tuned cells and eval languages: "
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


def _corr_ci(ci: tuple[float, float] | None) -> str:
    return "CI n/a" if ci is None else f"95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def equivalence(r: float, n: int, margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """Two one-sided tests that the correlation lies inside ±margin (Fisher z): equivalent when the
    (1 − 2α) interval lies inside it. Absence of evidence of a correlation is not evidence of none; this is."""
    z, se = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), 1 / math.sqrt(n - 3)
    q = normal_quantile(1 - alpha)
    lo, hi = math.tanh(z - q * se), math.tanh(z + q * se)
    return {"margin": margin, "ci90": (lo, hi), "equivalent": -margin < lo and hi < margin}


def decoupling(sc: pl.DataFrame, margin: float = 0.3) -> Finding:
    """Is the change in safety correlated with the change in capability? "Decoupled" is claimed only by an
    equivalence test: the correlation's 90% interval inside ±margin (two one-sided tests at α = 0.05);
    otherwise the text says only what the interval shows."""
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
            f"fine-tune, so they are not independent and the intervals are optimistic): Pearson r = "
            f"{stats['pearson']:+.2f} ({_corr_ci(stats['pearson_ci'])}, Fisher z), Spearman ρ = "
            f"{stats['spearman']:+.2f} ({_corr_ci(stats['spearman_ci'])}, bootstrap).")
    ci = stats["pearson_ci"]
    eq = equivalence(stats["pearson"], n, margin) if n > 3 else None
    facts["equivalence"] = eq
    if eq is not None and eq["equivalent"]:
        text += (f" Equivalence test (margin ±{margin}, two one-sided tests at α = 0.05): the 90% interval "
                 f"[{eq['ci90'][0]:+.2f}, {eq['ci90'][1]:+.2f}] lies inside ±{margin}, so any correlation is weaker "
                 f"than {margin}: decoupled at that margin.")
    elif ci is not None and not ci[0] <= 0 <= ci[1]:
        text += " The interval excludes 0: safety and capability change are correlated here."
    else:
        shown = "" if ci is None else f" r lies in [{ci[0]:+.2f}, {ci[1]:+.2f}];"
        text += (f"{shown} the data do not show decoupling (the equivalence test at margin ±{margin} fails): an "
                 "interval that includes 0 is absence of evidence of a correlation, not evidence of none.")
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
