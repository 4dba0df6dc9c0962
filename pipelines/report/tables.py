"""The report's tables, derived from a sweep's tidy metrics table (one row per cell × eval language ×
metric, see pipelines.evaluate.measure): compliance, change against the base model, over-refusal, fidelity,
capability change, drift per layer and per-category change. Pure polars, no plotting, so the findings
and the figures read the same numbers and tests can feed synthetic tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipelines.evaluate.measure import TIDY_SCHEMA

ID_COLS = ["cell", "model", "ft_lang", "seed", "epochs"]
BASE = "base"
ALPHA = 0.05  # significance level of the paired test against the base model (uncorrected, per test)
CATEGORY_PREFIX = "compliance_rate/category="


def empty_tidy() -> pl.DataFrame:
    return pl.DataFrame(schema=TIDY_SCHEMA)


def normalise(tidy: pl.DataFrame) -> pl.DataFrame:
    """The tidy table with the canonical columns and dtypes, NaN turned into null: a rate over no
    parseable answer is unknown, and null keeps it out of means and plots alike."""
    missing = [c for c in TIDY_SCHEMA if c not in tidy.columns]
    if missing:
        raise ValueError(f"tidy metrics table lacks columns {missing} (expected {list(TIDY_SCHEMA)})")
    out = tidy.select([pl.col(c).cast(t) for c, t in TIDY_SCHEMA.items()])
    return out.with_columns([pl.col(c).fill_nan(None) for c in ("value", "ci_low", "ci_high")])


@dataclass
class Cells:
    """The cells a sweep planned and the ones its tidy table has, in study order (per model: base
    first, then fine-tune languages in config order, seeds, epochs)."""

    present: list[dict[str, Any]]
    expected: list[dict[str, Any]] = field(default_factory=list)
    eval_langs: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[dict[str, Any]]:
        have = {c["cell"] for c in self.present}
        return [c for c in self.expected if c["cell"] not in have]

    @property
    def order(self) -> list[str]:
        return [c["cell"] for c in self.present]

    def models(self) -> list[str]:
        return list(dict.fromkeys(c["model"] for c in self.present))

    def fine_tuned(self) -> list[dict[str, Any]]:
        return [c for c in self.present if c["ft_lang"] != BASE]


def cells_of(tidy: pl.DataFrame, expected: list[dict[str, Any]] | None = None,
             eval_langs: list[str] | None = None) -> Cells:
    """Which cells the table has, ordered as the study planned them (`expected`, from the config) and,
    for cells the plan does not know, base first then in order of appearance."""
    seen = tidy.select(ID_COLS).unique(subset=["cell"], maintain_order=True).to_dicts()
    expected = list(expected or [])
    rank = {c["cell"]: i for i, c in enumerate(expected)}
    first = {c["cell"]: i for i, c in enumerate(seen)}
    models = list(dict.fromkeys([c["model"] for c in expected] + [c["model"] for c in seen]))
    seen.sort(key=lambda c: (models.index(c["model"]), c["cell"] not in rank,
                             rank.get(c["cell"], 0), c["ft_lang"] != BASE, first[c["cell"]]))
    langs = list(eval_langs or [])
    for lang in tidy.filter(pl.col("metric") == "compliance_rate")["eval_lang"].unique(maintain_order=True):
        if lang not in langs:
            langs.append(lang)
    return Cells(seen, expected, langs)


def metric_long(tidy: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Rows of one metric: the id columns, eval_lang, value, ci_low, ci_high, n."""
    return tidy.filter(pl.col("metric") == metric).drop("metric")


def _order(df: pl.DataFrame, cells: Cells, lang_col: str | None = "eval_lang") -> pl.DataFrame:
    """Rows in study order (cells) then eval-language order; unknown values last."""
    rank = {c: i for i, c in enumerate(cells.order)}
    keys = [pl.col("cell").replace_strict(rank, default=len(rank), return_dtype=pl.Int64)]
    if lang_col and lang_col in df.columns:
        lrank = {c: i for i, c in enumerate(cells.eval_langs)}
        keys.append(pl.col(lang_col).replace_strict(lrank, default=len(lrank), return_dtype=pl.Int64))
    return df.sort(keys, maintain_order=True)


def compliance_long(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Per cell × eval language: compliance rate, its bootstrap CI, answers (n), parseable answers
    (n_parseable, what the rate is over) and unparseable ones."""
    comp = metric_long(tidy, "compliance_rate").rename(
        {"value": "compliance_rate", "n": "n_parseable"})
    unp = metric_long(tidy, "unparseable").select(
        "cell", "eval_lang", pl.col("value").cast(pl.Int64).alias("unparseable"), pl.col("n").alias("n_total"))
    out = comp.join(unp, on=["cell", "eval_lang"], how="left").with_columns(
        pl.coalesce("n_total", pl.col("n_parseable") + pl.col("unparseable").fill_null(0)).alias("n"),
        pl.col("unparseable").fill_null(0))
    out = out.select(*ID_COLS, "eval_lang", "compliance_rate", "ci_low", "ci_high", "n", "n_parseable",
                     "unparseable")
    return _order(out, cells)


def compliance_wide(comp: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """One row per cell, one column per eval language (the compliance rate)."""
    if comp.height == 0:
        return pl.DataFrame(schema={**{c: TIDY_SCHEMA[c] for c in ID_COLS},
                                    **{lang: pl.Float64 for lang in cells.eval_langs}})
    wide = comp.pivot(on="eval_lang", index=ID_COLS, values="compliance_rate", aggregate_function="first")
    for lang in cells.eval_langs:
        if lang not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(lang))
    return _order(wide.select(*ID_COLS, *cells.eval_langs), cells, None)


def smoothed_fold(ft_rate: float | None, ft_n: int | None, base_rate: float | None,
                  base_n: int | None) -> float | None:
    """Fold change of compliance, fine-tuned over base, with half a prompt added to both counts
    (Haldane–Anscombe): a base model that refused every prompt still gives a finite fold, and at
    hundreds of prompts the correction is negligible."""
    if None in (ft_rate, base_rate) or not ft_n or not base_n:
        return None
    ft = (ft_rate * ft_n + 0.5) / (ft_n + 1)
    base = (base_rate * base_n + 0.5) / (base_n + 1)
    return ft / base


def deltas(tidy: pl.DataFrame, comp: pl.DataFrame, cells: Cells, alpha: float = ALPHA) -> pl.DataFrame:
    """Per fine-tuned cell × eval language: base and fine-tuned compliance, the change, its paired
    permutation p-value (and the one pooled over seeds where there are several), the smoothed fold and
    whether the change is significant at `alpha`."""
    schema = {**{c: TIDY_SCHEMA[c] for c in ID_COLS}, "eval_lang": pl.String, "base_rate": pl.Float64,
              "ft_rate": pl.Float64, "delta": pl.Float64, "p_value": pl.Float64, "p_value_seeds": pl.Float64,
              "fold": pl.Float64, "significant": pl.Boolean, "n": pl.Int64}
    d = metric_long(tidy, "delta/compliance_rate").select(*ID_COLS, "eval_lang", pl.col("value").alias("delta"), "n")
    if d.height == 0:
        return pl.DataFrame(schema=schema)
    p = metric_long(tidy, "delta/p_value").select("cell", "eval_lang", pl.col("value").alias("p_value"))
    ps = metric_long(tidy, "delta/p_value_seeds").select("cell", "eval_lang", pl.col("value").alias("p_value_seeds"))
    rates = comp.select("cell", "eval_lang", "compliance_rate", "n_parseable")
    base = comp.filter(pl.col("ft_lang") == BASE).select(
        "model", "eval_lang", pl.col("compliance_rate").alias("base_rate"), pl.col("n_parseable").alias("base_n"))
    out = (d.join(p, on=["cell", "eval_lang"], how="left").join(ps, on=["cell", "eval_lang"], how="left")
           .join(rates, on=["cell", "eval_lang"], how="left").join(base, on=["model", "eval_lang"], how="left")
           .rename({"compliance_rate": "ft_rate"}))
    folds = [smoothed_fold(r["ft_rate"], r["n_parseable"], r["base_rate"], r["base_n"])
             for r in out.iter_rows(named=True)]
    out = out.with_columns(pl.Series("fold", folds, dtype=pl.Float64),
                           (pl.col("p_value") < alpha).fill_null(False).alias("significant"))
    return _order(out.select(list(schema)), cells)


def grid_rows(cells: Cells, model: str, include_base: bool = True) -> list[tuple[str, str, int | None]]:
    """Heatmap rows of one model: (label, ft_lang, epochs), seeds pooled. Epochs show in the label only
    when the model was fine-tuned for several epoch counts."""
    mine = [c for c in cells.present if c["model"] == model]
    epochs = {c["epochs"] for c in mine if c["ft_lang"] != BASE}
    rows: list[tuple[str, str, int | None]] = []
    for c in mine:
        if c["ft_lang"] == BASE:
            key = ("base", BASE, None)
            if not include_base:
                continue
        else:
            label = f"ft {c['ft_lang']}" + (f" · {c['epochs']} ep" if len(epochs) > 1 else "")
            key = (label, c["ft_lang"], c["epochs"])
        if key not in rows:
            rows.append(key)
    return rows


def _row_filter(model: str, ft_lang: str, epochs: int | None) -> pl.Expr:
    e = (pl.col("model") == model) & (pl.col("ft_lang") == ft_lang)
    return e if epochs is None else e & (pl.col("epochs") == epochs)


def compliance_grid(comp: pl.DataFrame, cells: Cells, model: str) -> dict[str, Any]:
    """Matrix for the compliance heatmap: mean over seeds, with the CI (one seed) or the range over
    seeds (several), and how many seeds each entry pools."""
    rows = grid_rows(cells, model)
    langs = cells.eval_langs
    val, lo, hi, seeds = ([[None] * len(langs) for _ in rows] for _ in range(4))
    for i, (_, ft, ep) in enumerate(rows):
        sub = comp.filter(_row_filter(model, ft, ep))
        for j, lang in enumerate(langs):
            x = sub.filter(pl.col("eval_lang") == lang)
            v = x["compliance_rate"].drop_nulls()
            if v.len() == 0:
                continue
            val[i][j] = float(v.mean())
            seeds[i][j] = v.len()
            if v.len() == 1:
                lo[i][j], hi[i][j] = x["ci_low"].drop_nulls().first(), x["ci_high"].drop_nulls().first()
            else:
                lo[i][j], hi[i][j] = float(v.min()), float(v.max())
    return {"rows": [r[0] for r in rows], "cols": langs, "value": val, "low": lo, "high": hi, "seeds": seeds}


def delta_grid(dl: pl.DataFrame, cells: Cells, model: str) -> dict[str, Any]:
    """Matrix for the change-against-base heatmap: mean change over seeds and the p-value of the test
    pooled over seeds (a single seed's own test when there is one seed)."""
    rows = grid_rows(cells, model, include_base=False)
    langs = cells.eval_langs
    val, pv, sig = ([[None] * len(langs) for _ in rows] for _ in range(3))
    for i, (_, ft, ep) in enumerate(rows):
        sub = dl.filter(_row_filter(model, ft, ep))
        for j, lang in enumerate(langs):
            x = sub.filter(pl.col("eval_lang") == lang)
            d = x["delta"].drop_nulls()
            if d.len() == 0:
                continue
            val[i][j] = float(d.mean())
            pooled = x["p_value_seeds"].drop_nulls()
            single = x["p_value"].drop_nulls()
            p = pooled.first() if pooled.len() else (single.first() if single.len() == 1 else None)
            pv[i][j] = p
            sig[i][j] = p is not None and p < ALPHA
    return {"rows": [r[0] for r in rows], "cols": langs, "value": val, "p": pv, "significant": sig}


def rate_table(tidy: pl.DataFrame, metric: str, name: str, cells: Cells) -> pl.DataFrame:
    """A per cell × eval language rate (over-refusal, fidelity) with its CI and n."""
    out = metric_long(tidy, metric).rename({"value": name})
    return _order(out.select(*ID_COLS, "eval_lang", name, "ci_low", "ci_high", "n"), cells)


def refusal_plane(comp: pl.DataFrame, over: pl.DataFrame) -> pl.DataFrame:
    """Compliance with unsafe prompts against refusal of safe ones, per cell × eval language."""
    o = over.select("cell", "eval_lang", pl.col("overrefusal_rate"), pl.col("ci_low").alias("over_ci_low"),
                    pl.col("ci_high").alias("over_ci_high"))
    return comp.join(o, on=["cell", "eval_lang"], how="inner").filter(
        pl.col("compliance_rate").is_not_null() & pl.col("overrefusal_rate").is_not_null())


def drift_table(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Per fine-tuned cell, drift kind (l2, cos, refusal_proj) and layer: the value."""
    d = tidy.filter(pl.col("metric").str.starts_with("drift/"))
    parts = d["metric"].str.extract_groups(r"^drift/([^/]+)/layer_(\d+)$")
    d = d.with_columns(parts.struct.field("1").alias("kind"),
                       parts.struct.field("2").cast(pl.Int64).alias("layer")).filter(pl.col("kind").is_not_null())
    rank = {c: i for i, c in enumerate(cells.order)}
    return d.select(*ID_COLS, "kind", "layer", "value", "n").sort(
        pl.col("cell").replace_strict(rank, default=len(rank), return_dtype=pl.Int64), "kind", "layer")


def capability_change(tidy: pl.DataFrame, dl: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Per fine-tuned cell × eval language: the safety change (compliance minus base) against the
    capability change, Δ log perplexity of held-out benign answers in that language against the base
    model (positive: the fine-tune got worse at it); WikiText-2 (English) where a language has no
    held-out benign perplexity."""
    schema = {**{c: TIDY_SCHEMA[c] for c in ID_COLS}, "eval_lang": pl.String, "safety_change": pl.Float64,
              "capability_change": pl.Float64, "capability_measure": pl.String, "significant": pl.Boolean}
    if dl.height == 0:
        return pl.DataFrame(schema=schema)
    ppl = {(r["cell"], r["eval_lang"]): r["value"] for r in metric_long(tidy, "ppl_benign").iter_rows(named=True)}
    wiki = {r["cell"]: r["value"] for r in metric_long(tidy, "ppl_wikitext2").iter_rows(named=True)}
    base_of = {c["model"]: c["cell"] for c in cells.present if c["ft_lang"] == BASE}
    rows = []
    for r in dl.iter_rows(named=True):
        base = base_of.get(r["model"])
        x, measure = None, None
        if base is not None:
            ft_p, b_p = ppl.get((r["cell"], r["eval_lang"])), ppl.get((base, r["eval_lang"]))
            if _positive(ft_p) and _positive(b_p):
                x, measure = math.log(ft_p) - math.log(b_p), f"ppl_benign/{r['eval_lang']}"
            elif _positive(wiki.get(r["cell"])) and _positive(wiki.get(base)):
                x, measure = math.log(wiki[r["cell"]]) - math.log(wiki[base]), "ppl_wikitext2"
        if x is None or r["delta"] is None:
            continue
        rows.append({**{c: r[c] for c in ID_COLS}, "eval_lang": r["eval_lang"], "safety_change": r["delta"],
                     "capability_change": x, "capability_measure": measure, "significant": r["significant"]})
    return pl.DataFrame(rows, schema=schema)


def _positive(x: float | None) -> bool:
    return x is not None and x == x and x > 0


def category_changes(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Per category × fine-tuned cell × eval language: compliance in that category minus the base
    model's in the same category and language, with the prompts it is over."""
    schema = {**{c: TIDY_SCHEMA[c] for c in ID_COLS}, "eval_lang": pl.String, "category": pl.String,
              "base_rate": pl.Float64, "ft_rate": pl.Float64, "change": pl.Float64, "n": pl.Int64}
    cat = tidy.filter(pl.col("metric").str.starts_with(CATEGORY_PREFIX)).with_columns(
        pl.col("metric").str.strip_prefix(CATEGORY_PREFIX).alias("category"))
    if cat.height == 0:
        return pl.DataFrame(schema=schema)
    base = cat.filter(pl.col("ft_lang") == BASE).select(
        "model", "eval_lang", "category", pl.col("value").alias("base_rate"))
    ft = cat.filter(pl.col("ft_lang") != BASE).rename({"value": "ft_rate"})
    out = ft.join(base, on=["model", "eval_lang", "category"], how="inner").with_columns(
        (pl.col("ft_rate") - pl.col("base_rate")).alias("change")).filter(pl.col("change").is_not_null())
    return _order(out.select(list(schema)), cells)


def judge_agreement(tidy: pl.DataFrame) -> dict[str, Any]:
    """The judge's κ and accuracy on held-out human labels (the same for every cell of a sweep)."""
    out: dict[str, Any] = {}
    for metric, key in (("judge/kappa", "kappa"), ("judge/accuracy", "accuracy")):
        x = metric_long(tidy, metric).filter(pl.col("value").is_not_null())
        if x.height:
            out[key] = float(x["value"].first())
            out["heldout_n"] = int(x["n"].first()) if x["n"].first() is not None else None
    return out
