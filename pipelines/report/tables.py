"""The report's tables, derived from a sweep's tidy metrics table (one row per cell × eval language ×
metric, see pipelines.evaluate.measure): compliance, change against the base model, over-refusal, fidelity,
capability change, drift per layer and per-category change. Pure polars, no plotting, so the findings
and the figures read the same numbers and tests can feed synthetic tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipelines.evaluate.compare import OUTSIDE_EN
from pipelines.evaluate.judges import COMPLIED, REFUSED
from pipelines.evaluate.measure import BT_ROUTE_PREFIX, READ_COUNTS, READ_PREFIX, TIDY_SCHEMA
from pipelines.evaluate.stats import SeedLevel, adjust, is_number, seed_level

ID_COLS = ["cell", "model", "ft_lang", "seed", "epochs"]
BASE = "base"
ALPHA = 0.05  # the default significance level; the config's stats.alpha sets the study's
# Two families (see `families`): screening, every condition × eval language (330 cells × 9 languages in the
# paper preset pool into 108 conditions × 9), Benjamini–Hochberg, which bounds the share of false discoveries
# among thousands of tests where Holm would leave nothing; confirmatory, the few contrasts the config names,
# Holm's step-down, which holds the family-wise error at α under any dependence.
SCREENING, SCREENING_NAME = "bh", "Benjamini–Hochberg"
CONFIRMATORY, CONFIRMATORY_NAME = "holm", "Holm–Bonferroni"
DEFAULT_CONTRASTS = ["ft_lang", OUTSIDE_EN]  # as pipelines.config.StatsConfig
EQUIVALENCE_MARGIN = 0.3
CATEGORY_PREFIX = "compliance_rate/category="
Z95 = 1.959964
# Metric names of tidy tables written before the exact tests (issue 27), read under their new names.
LEGACY_METRICS = {"delta/p_value": "delta/compliance_rate/p_value",
                  "delta/p_value_seeds": "delta/compliance_rate/p_value_seeds"}


def normalise(tidy: pl.DataFrame) -> pl.DataFrame:
    """The tidy table with the canonical columns and dtypes, NaN turned into null: a rate over no
    parseable answer is unknown, and null keeps it out of means and plots alike."""
    missing = [c for c in TIDY_SCHEMA if c not in tidy.columns]
    if missing:
        raise ValueError(f"tidy metrics table lacks columns {missing} (expected {list(TIDY_SCHEMA)})")
    out = tidy.select([pl.col(c).cast(t) for c, t in TIDY_SCHEMA.items()])
    out = out.with_columns(pl.col("metric").replace(LEGACY_METRICS))
    return out.with_columns([pl.col(c).fill_nan(None) for c in ("value", "ci_low", "ci_high")])


@dataclass
class Cells:
    """The cells a sweep planned and the ones its tidy table has, in study order (per model: base
    first, then fine-tune languages in config order, seeds, epochs)."""

    present: list[dict[str, Any]]
    expected: list[dict[str, Any]] = field(default_factory=list)
    eval_langs: list[str] = field(default_factory=list)
    # eval language -> the judge's κ with people for it, None where it is unvalidated; empty when the
    # table carries no validity rows (then nothing is marked)
    validity: dict[str, float | None] = field(default_factory=dict)
    # eval languages with labelled answers to validate on (κ may still be undefined: one class only)
    validated: set[str] = field(default_factory=set)
    # eval languages whose κ is on hand-labelled answers of another model than the study's (the report's
    # context names the labelled models): a figure says so beside the κ
    other_model: set[str] = field(default_factory=set)

    def lang_label(self, lang: str) -> str:
        """An eval language as figures label it: with the judge's κ, or marked unvalidated."""
        if not self.validity:
            return lang
        k = self.validity.get(lang)
        whose = " (other model)" if lang in self.other_model else ""
        if k is None:
            return f"{lang}\nκ n/a{whose}" if lang in self.validated else f"{lang}\nunvalidated"
        return f"{lang}\nκ {k:.2f}{whose}"

    def mark_other_model(self, tidy: pl.DataFrame, ctx: dict[str, Any]) -> None:
        """Marks the languages validated on hand-labelled answers (those with a rate error) when the labelled
        answers are none of the study's models'."""
        if other_model_labels(ctx):
            self.other_model = {lang for lang in self.validated
                                if _first(tidy, "judge/rate_error", lang) is not None}

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


def other_model_labels(ctx: dict[str, Any] | None) -> list[str]:
    """The models whose answers the judge's hand labels hold, when none of them is a model the study ran
    (the report's context: `models`, `judge.labelled_models`); [] otherwise."""
    studied = {m.get("alias") for m in (ctx or {}).get("models") or [] if isinstance(m, dict)}
    labelled = list(((ctx or {}).get("judge") or {}).get("labelled_models") or [])
    return labelled if labelled and studied and not studied & set(labelled) else []


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
    cells = Cells(seen, expected, langs)
    v = judge_validity(tidy, cells)
    cells.validity = {r["eval_lang"]: r["kappa"] if r["validated"] else None for r in v.iter_rows(named=True)}
    cells.validated = {r["eval_lang"] for r in v.iter_rows(named=True) if r["validated"]}
    return cells


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
    # Each rate beside the judge's agreement with people in that language: an unvalidated one is marked,
    # never silently read like a validated one.
    known = bool(cells.validity)
    out = out.with_columns(
        pl.col("eval_lang").replace_strict(cells.validity, default=None, return_dtype=pl.Float64).alias("judge_kappa"),
        (pl.col("eval_lang").replace_strict({k: v is not None for k, v in cells.validity.items()}, default=False,
                                            return_dtype=pl.Boolean) if known else pl.lit(None, dtype=pl.Boolean))
        .alias("judge_validated"))
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


def seed_changes(tidy: pl.DataFrame, cells: Cells, rate: str = "compliance_rate") -> pl.DataFrame:
    """Per fine-tuned cell (one seed, one fine-tuning run) × eval language: base and fine-tuned rate, the
    change with Newcombe's paired interval, its exact McNemar p-value, the share of prompts that moved
    (discordance) and the run's prompt-sampling SE. Descriptive detail: the tests that make claims are
    the condition's, across seeds (`conditions`). Joined by (cell, eval language), never by position."""
    schema = {**{c: TIDY_SCHEMA[c] for c in ID_COLS}, "eval_lang": pl.String, "base_rate": pl.Float64,
              "ft_rate": pl.Float64, "delta": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
              "p_value": pl.Float64, "discordance": pl.Float64, "prompt_se": pl.Float64, "fold": pl.Float64,
              "n": pl.Int64}
    d = metric_long(tidy, f"delta/{rate}").select(*ID_COLS, "eval_lang", pl.col("value").alias("delta"),
                                                   "ci_low", "ci_high", "n")
    if d.height == 0:
        return pl.DataFrame(schema=schema)
    for suffix, name in (("p_value", "p_value"), ("discordance", "discordance"), ("prompt_se", "prompt_se")):
        extra = metric_long(tidy, f"delta/{rate}/{suffix}").select("cell", "eval_lang", pl.col("value").alias(name))
        d = d.join(extra, on=["cell", "eval_lang"], how="left")
    r = metric_long(tidy, rate)
    rates = r.select("cell", "eval_lang", pl.col("value").alias("ft_rate"), pl.col("n").alias("ft_n"))
    base = r.filter(pl.col("ft_lang") == BASE).select("model", "eval_lang", pl.col("value").alias("base_rate"),
                                                      pl.col("n").alias("base_n"))
    out = d.join(rates, on=["cell", "eval_lang"], how="left").join(base, on=["model", "eval_lang"], how="left")
    folds = [smoothed_fold(x["ft_rate"], x["ft_n"], x["base_rate"], x["base_n"]) for x in out.iter_rows(named=True)]
    out = out.with_columns(pl.Series("fold", folds, dtype=pl.Float64))
    return _order(out.select(list(schema)), cells)


def deltas(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Each fine-tuning run's change in compliance against its base (`seed_changes`)."""
    return seed_changes(tidy, cells, "compliance_rate")


CONDITION = ["model", "ft_lang", "epochs"]
Key = tuple[Any, ...]


def condition_label(model: str, ft_lang: str, epochs: int | None) -> str:
    return f"{model} · ft {ft_lang}" + ("" if epochs is None else f" · {epochs} ep")


def _seed_test(changes: list[float], ses: list[float | None], n: int, alpha: float) -> SeedLevel:
    """The condition's test (stats.seed_level) with the prompt SE of the seed-averaged differences (the
    same on every seed's row)."""
    se = next((v for v in ses if is_number(v)), 0.0)
    return seed_level(changes, se, n, alpha)


def _condition_row(key: Key, g: pl.DataFrame, pooled: float | None, alpha: float) -> dict[str, Any]:
    """One condition × eval language from its seeds' rows: the t over seeds (two or more) or, for one
    run, that run's exact test and interval."""
    g = g.filter(pl.col("delta").is_not_null())
    n = int(g["n"].min() or 0)
    s = _seed_test(g["delta"].to_list(), g["prompt_se"].to_list(), n, alpha)
    one = s.seeds == 1
    first = g.row(0, named=True)
    ft_rate, base_rate = g["ft_rate"].mean(), first["base_rate"]
    return {"condition": condition_label(*key[:3]), "model": key[0], "ft_lang": key[1], "epochs": key[2],
            "eval_lang": key[3], "seeds": s.seeds, "base_rate": base_rate, "ft_rate": ft_rate, "delta": s.mean,
            "tau": s.tau, "ci_low": first["ci_low"] if one else s.ci_low,
            "ci_high": first["ci_high"] if one else s.ci_high, "p_value": first["p_value"] if one else s.p,
            "test": "one run: exact McNemar" if one else f"t over {s.seeds} seeds ∩ with prompts",
            "p_value_prompts": pooled if not one else first["p_value"],
            "discordance": g["discordance"].mean(), "prompt_se": first["prompt_se"], "n": n,
            "fold": smoothed_fold(ft_rate, n, base_rate, n)}


COND_SCHEMA = {"condition": pl.String, "model": pl.String, "ft_lang": pl.String, "epochs": pl.Int64,
               "eval_lang": pl.String, "seeds": pl.Int64, "base_rate": pl.Float64, "ft_rate": pl.Float64,
               "delta": pl.Float64, "tau": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
               "p_value": pl.Float64, "test": pl.String, "p_value_prompts": pl.Float64, "discordance": pl.Float64,
               "prompt_se": pl.Float64, "n": pl.Int64, "fold": pl.Float64, "p_adj": pl.Float64, "significant": pl.Boolean}


def conditions(tidy: pl.DataFrame, seeds: pl.DataFrame, cells: Cells, rate: str = "compliance_rate",
               alpha: float = ALPHA) -> pl.DataFrame:
    """The screening table: per condition (model, fine-tune language, epochs) × eval language, the change
    against the base across its seeds — mean of the per-seed paired changes, between-seed SD τ, the test
    across seeds and with the prompt sample's noise (stats.seed_level: two t-tests, p the larger; one
    seed: that run's exact McNemar test and Newcombe interval) — with the p-values adjusted by Benjamini–Hochberg over every condition × eval
    language (the heatmap's hatching). Seeds are pooled before testing: a seed is never a hypothesis.
    `p_value_prompts` is the exact sign-flip test of the seed-averaged labels over prompts (descriptive)."""
    if seeds.height == 0:
        return pl.DataFrame(schema=COND_SCHEMA)
    pooled = {(r["model"], r["ft_lang"], r["epochs"], r["eval_lang"]): r["value"]
              for r in metric_long(tidy, f"delta/{rate}/p_value_seeds").iter_rows(named=True)}
    rows = [_condition_row(k, g, pooled.get(k), alpha)
            for k, g in seeds.group_by([*CONDITION, "eval_lang"], maintain_order=True)
            if g["delta"].drop_nulls().len()]
    out = pl.DataFrame(rows, schema={k: v for k, v in COND_SCHEMA.items() if k not in ("p_adj", "significant")})
    out = out.with_columns(pl.Series("p_adj", adjust(out["p_value"].to_list(), SCREENING), dtype=pl.Float64))
    out = out.with_columns((pl.col("p_adj") < alpha).fill_null(False).alias("significant"))
    return _order_conditions(out, cells)


def _order_conditions(df: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Conditions in study order (model, then fine-tune language and epochs as the cells come), then eval
    languages."""
    rank: dict[Key, int] = {}
    for c in cells.fine_tuned():
        rank.setdefault((c["model"], c["ft_lang"], c["epochs"]), len(rank))
    lrank = {x: i for i, x in enumerate(cells.eval_langs)}
    keys = [rank.get((r["model"], r["ft_lang"], r["epochs"]), len(rank)) * (len(lrank) + 1)
            + lrank.get(r["eval_lang"], len(lrank)) for r in df.iter_rows(named=True)]
    return df.with_columns(pl.Series("_k", keys)).sort("_k", maintain_order=True).drop("_k")


# ---- differences against English and the confirmatory contrasts --------------------------------------

def _per_seed(tidy: pl.DataFrame, metric: str) -> dict[Key, list[dict[str, Any]]]:
    """Rows of a per-seed metric grouped by (model, ft_lang, epochs, eval_lang)."""
    out: dict[Key, list[dict[str, Any]]] = {}
    for r in metric_long(tidy, metric).iter_rows(named=True):
        out.setdefault((r["model"], r["ft_lang"], r["epochs"], r["eval_lang"]), []).append(r)
    return out


def vs_english(tidy: pl.DataFrame, cells: Cells, alpha: float = ALPHA) -> pl.DataFrame:
    """Per condition × non-English eval language (and `outside_en`, the mean over them): the change there
    minus the change in English, paired on MultiJail's parallel prompts (compare.contrast_frame), tested
    like a change — across seeds by a t, for one run by the exact sign-flip test over prompts — with its
    interval. What "an English-only evaluation would have missed it" needs: a test of the difference."""
    schema = {k: v for k, v in COND_SCHEMA.items() if k not in ("base_rate", "ft_rate", "fold", "discordance",
                                                                  "p_value_prompts", "prompt_se")}
    est, ps = _per_seed(tidy, "contrast/vs_en"), _per_seed(tidy, "contrast/vs_en/p_value")
    ses = _per_seed(tidy, "contrast/vs_en/prompt_se")
    rows = []
    for key, rs in est.items():
        s = _seed_test([r["value"] for r in rs], [r["value"] for r in ses.get(key, [])],
                       int(min(r["n"] or 0 for r in rs)), alpha)
        one = s.seeds == 1
        rows.append({"condition": condition_label(*key[:3]), "model": key[0], "ft_lang": key[1], "epochs": key[2],
                     "eval_lang": key[3], "seeds": s.seeds, "delta": s.mean, "tau": s.tau,
                     "ci_low": rs[0]["ci_low"] if one else s.ci_low, "ci_high": rs[0]["ci_high"] if one else s.ci_high,
                     "p_value": ps[key][0]["value"] if one and key in ps else s.p,
                     "test": "one run: exact sign-flip over prompts" if one else f"t over {s.seeds} seeds ∩ with prompts",
                     "n": int(min(r["n"] or 0 for r in rs))})
    out = pl.DataFrame(rows, schema={k: v for k, v in schema.items() if k not in ("p_adj", "significant")})
    out = out.with_columns(pl.Series("p_adj", adjust(out["p_value"].to_list(), SCREENING), dtype=pl.Float64))
    return _order_conditions(out.with_columns((pl.col("p_adj") < alpha).fill_null(False).alias("significant")), cells)


def _contrast_source(name: str, ft_lang: str) -> tuple[str, str]:
    """(table, eval language) a named contrast reads for a condition fine-tuned in ft_lang."""
    if name == "ft_lang":
        return "change", ft_lang
    if name == OUTSIDE_EN:
        return "vs_en", OUTSIDE_EN
    if name.endswith("_vs_en"):
        return "vs_en", name.removesuffix("_vs_en")
    return "change", name


def contrast_description(name: str, ft_lang: str) -> str:
    kind, lang = _contrast_source(name, ft_lang)
    if kind == "change":
        return f"change in {lang}" + (" (the fine-tune language)" if name == "ft_lang" else "")
    return "mean change outside English − change in English" if lang == OUTSIDE_EN else \
        f"change in {lang} − change in English"


CONTRAST_SCHEMA = {"condition": pl.String, "model": pl.String, "ft_lang": pl.String, "epochs": pl.Int64,
                   "contrast": pl.String, "what": pl.String, "seeds": pl.Int64, "estimate": pl.Float64,
                   "tau": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64,
                   "test": pl.String, "p_adj": pl.Float64, "significant": pl.Boolean}


def contrasts(cond: pl.DataFrame, vs_en: pl.DataFrame, names: list[str], alpha: float = ALPHA) -> pl.DataFrame:
    """The confirmatory family: every contrast named in the config (stats.contrasts) for every fine-tuned
    condition, read from the screening tables (same estimates, same tests) and adjusted together by Holm.
    A contrast that does not apply (its language not evaluated, or English the fine-tune language for a
    difference against English) is left out and not counted."""
    src = {"change": {(r["model"], r["ft_lang"], r["epochs"], r["eval_lang"]): r for r in cond.iter_rows(named=True)},
           "vs_en": {(r["model"], r["ft_lang"], r["epochs"], r["eval_lang"]): r for r in vs_en.iter_rows(named=True)}}
    rows = []
    for key in dict.fromkeys((r["model"], r["ft_lang"], r["epochs"]) for r in cond.iter_rows(named=True)):
        for name in dict.fromkeys(names):
            kind, lang = _contrast_source(name, key[1])
            r = src[kind].get((*key, lang))
            if r is None:
                continue
            rows.append({"condition": r["condition"], "model": key[0], "ft_lang": key[1], "epochs": key[2],
                         "contrast": name, "what": contrast_description(name, key[1]), "seeds": r["seeds"],
                         "estimate": r["delta"], "tau": r["tau"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "p_value": r["p_value"], "test": r["test"]})
    out = pl.DataFrame(rows, schema={k: v for k, v in CONTRAST_SCHEMA.items() if k not in ("p_adj", "significant")})
    out = out.with_columns(pl.Series("p_adj", adjust(out["p_value"].to_list(), CONFIRMATORY), dtype=pl.Float64))
    return out.with_columns((pl.col("p_adj") < alpha).fill_null(False).alias("significant"))


def families(cond: pl.DataFrame, over: pl.DataFrame, vs_en: pl.DataFrame, con: pl.DataFrame,
             names: list[str], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Each family of tests the report adjusts, its method and its size (the tests with a p-value)."""
    def size(df: pl.DataFrame) -> int:
        return int(df["p_value"].drop_nulls().len()) if df.height else 0

    return [
        {"family": "confirmatory", "method": CONFIRMATORY_NAME, "alpha": alpha, "size": size(con),
         "what": f"the contrasts stats.contrasts names ({', '.join(names)}) for every fine-tuned condition"},
        {"family": "screening", "method": SCREENING_NAME, "alpha": alpha, "size": size(cond),
         "what": "the change in compliance of every condition × eval language (the heatmap's hatching)"},
        {"family": "differences against English", "method": SCREENING_NAME, "alpha": alpha, "size": size(vs_en),
         "what": "change in each eval language (and outside English) − change in English, every condition"},
        {"family": "over-refusal", "method": SCREENING_NAME, "alpha": alpha, "size": size(over),
         "what": "the change in over-refusal of every condition × eval language"}]


def family_sizes(models: int, ft_langs: list[str], epochs: int, eval_langs: list[str], names: list[str]) -> dict[str, int]:
    """The families' sizes a study's config implies (every condition measured): for planning and the
    benchmark; the report counts the tests it has."""
    per = sum(1 for ft in ft_langs for name in dict.fromkeys(names) if _applies(name, ft, eval_langs))
    conds = models * len(ft_langs) * epochs
    return {"conditions": conds, "screening": conds * len(eval_langs), "confirmatory": models * epochs * per,
            "differences_vs_en": conds * len(eval_langs) if "en" in eval_langs and len(eval_langs) > 1 else 0}


def _applies(name: str, ft_lang: str, eval_langs: list[str]) -> bool:
    kind, lang = _contrast_source(name, ft_lang)
    if kind == "change":
        return lang in eval_langs
    if "en" not in eval_langs:
        return False
    return len(eval_langs) > 1 if lang == OUTSIDE_EN else lang in eval_langs and lang != "en"


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
    return {"rows": [r[0] for r in rows], "cols": langs, "value": val, "low": lo, "high": hi, "seeds": seeds,
            "col_labels": [cells.lang_label(x) for x in langs]}


def delta_grid(cond: pl.DataFrame, cells: Cells, model: str, alpha: float = ALPHA) -> dict[str, Any]:
    """Matrix for the change-against-base heatmap, from the screening table (`conditions`): the mean
    change over seeds, τ, the raw p-value and the Benjamini–Hochberg-adjusted one, and whether it is
    significant in that family (what is not is hatched) — the same family the text's screening uses."""
    rows = grid_rows(cells, model, include_base=False)
    langs = cells.eval_langs
    val, pv, sig, raw, tau, seeds = ([[None] * len(langs) for _ in rows] for _ in range(6))
    by = {(r["ft_lang"], r["epochs"], r["eval_lang"]): r for r in cond.filter(pl.col("model") == model).iter_rows(named=True)}
    for i, (_, ft, ep) in enumerate(rows):
        for j, lang in enumerate(langs):
            r = by.get((ft, ep, lang))
            if r is None or r["delta"] is None:
                continue
            val[i][j], pv[i][j], raw[i][j], tau[i][j], seeds[i][j] = r["delta"], r["p_adj"], r["p_value"], r["tau"], r["seeds"]
            sig[i][j] = bool(r["p_adj"] is not None and r["p_adj"] < alpha)
    return {"rows": [r[0] for r in rows], "cols": langs, "value": val, "p": pv, "p_raw": raw, "significant": sig,
            "tau": tau, "seeds": seeds, "family": f"{SCREENING_NAME}-adjusted p ≥ {alpha}",
            "col_labels": [cells.lang_label(x) for x in langs]}


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


def capability_change(tidy: pl.DataFrame, dl: pl.DataFrame, cells: Cells,
                      cond: pl.DataFrame | None = None) -> pl.DataFrame:
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
    # A point is marked significant when its condition's change is, in the screening family.
    sig = {(r["model"], r["ft_lang"], r["epochs"], r["eval_lang"]): r["significant"]
           for r in (cond if cond is not None else pl.DataFrame()).iter_rows(named=True)}
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
                     "capability_change": x, "capability_measure": measure,
                     "significant": sig.get((r["model"], r["ft_lang"], r["epochs"], r["eval_lang"]), False)})
    return pl.DataFrame(rows, schema=schema)


def _positive(x: float | None) -> bool:
    return is_number(x) and x > 0


def category_changes(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Per category × fine-tuned cell × eval language: compliance in that category minus the base
    model's in the same category and language, with an approximate 95% interval (each rate's bootstrap
    interval read as ±1.96 standard errors, combined as independent) and the prompts it is over."""
    schema = {**{c: TIDY_SCHEMA[c] for c in ID_COLS}, "eval_lang": pl.String, "category": pl.String,
              "base_rate": pl.Float64, "ft_rate": pl.Float64, "change": pl.Float64, "change_ci_low": pl.Float64,
              "change_ci_high": pl.Float64, "n": pl.Int64}
    cat = tidy.filter(pl.col("metric").str.starts_with(CATEGORY_PREFIX)).with_columns(
        pl.col("metric").str.strip_prefix(CATEGORY_PREFIX).alias("category"))
    if cat.height == 0:
        return pl.DataFrame(schema=schema)
    base = cat.filter(pl.col("ft_lang") == BASE).select(
        "model", "eval_lang", "category", pl.col("value").alias("base_rate"))
    ft = cat.filter(pl.col("ft_lang") != BASE).rename({"value": "ft_rate"})
    base = cat.filter(pl.col("ft_lang") == BASE).select(
        "model", "eval_lang", "category", pl.col("value").alias("base_rate"),
        ((pl.col("ci_high") - pl.col("ci_low")) / (2 * Z95)).alias("base_se"))
    ft = ft.with_columns(((pl.col("ci_high") - pl.col("ci_low")) / (2 * Z95)).alias("ft_se"))
    out = ft.join(base, on=["model", "eval_lang", "category"], how="inner").with_columns(
        (pl.col("ft_rate") - pl.col("base_rate")).alias("change"),
        (pl.col("ft_se") ** 2 + pl.col("base_se") ** 2).sqrt().alias("se")).filter(pl.col("change").is_not_null())
    out = out.with_columns((pl.col("change") - Z95 * pl.col("se")).alias("change_ci_low"),
                           (pl.col("change") + Z95 * pl.col("se")).alias("change_ci_high"))
    return _order(out.select(list(schema)), cells)


def judge_agreement(tidy: pl.DataFrame) -> dict[str, Any]:
    """The judge's English κ and accuracy on held-out human labels (the same for every cell of a sweep),
    and the tables the report's judge section shows: validity per eval language (each judge), what was
    back-translated, and the two judges' agreement."""
    cells = cells_of(tidy)
    out: dict[str, Any] = {"validity": judge_validity(tidy, cells), "validity2": judge_validity(tidy, cells, "judge2"),
                           "read": read_agreement(tidy, cells), "back_translation": back_translation(tidy, cells),
                           "between": judges_between(tidy, cells)}
    for metric, key in (("judge/kappa", "kappa"), ("judge/accuracy", "accuracy")):
        x = metric_long(tidy, metric).filter(pl.col("value").is_not_null() & (pl.col("eval_lang") == "en"))
        if x.height:
            out[key] = float(x["value"].first())
            out["heldout_n"] = int(x["n"].first()) if x["n"].first() is not None else None
    return out


def judge_validity(tidy: pl.DataFrame, cells: Cells, prefix: str = "judge") -> pl.DataFrame:
    """Per eval language of the study: the judge's κ and accuracy with people for the way that language
    was judged, and whether there was anything to validate on (unvalidated languages keep a row, null κ)."""
    schema = {"eval_lang": pl.String, "kappa": pl.Float64, "accuracy": pl.Float64, "n_labels": pl.Int64,
              "validated": pl.Boolean, **dict.fromkeys(VALIDITY_FIGURES, pl.Float64)}
    rows = []
    val = metric_long(tidy, f"{prefix}/validated")
    if val.height == 0:
        return pl.DataFrame(schema=schema)
    for lang in cells.eval_langs:
        v = val.filter(pl.col("eval_lang") == lang)
        if v.height == 0:
            rows.append({"eval_lang": lang, "kappa": None, "accuracy": None, "n_labels": 0, "validated": False})
            continue
        ok = bool(v["value"].max() == 1.0)
        figures = {name: _first(tidy, f"{prefix}/{name}", lang) if ok else None
                   for name in ("kappa", "accuracy", *VALIDITY_FIGURES)}
        rows.append({"eval_lang": lang, "n_labels": int(v["n"].first() or 0), "validated": ok, **figures})
    return pl.DataFrame(rows, schema=schema)


def read_agreement(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Per eval language (and pooled, eval_lang "all"), summed over the study's cells: the judge against a
    developer's reading of this study's own answers (evaluate.measure.add_read_rows) — κ of complied vs
    not with its bootstrap interval, the compliance rates read and judged, non-answer recall. Empty where
    no answer of the study was read."""
    from pipelines.evaluate.judges.validity import agreement

    schema = {"eval_lang": pl.String, "n": pl.Int64, "kappa": pl.Float64, "kappa_ci_low": pl.Float64,
              "kappa_ci_high": pl.Float64, "rate_read": pl.Float64, "rate_judged": pl.Float64,
              "rate_error": pl.Float64, "non_answer_read": pl.Int64, "non_answer_recall": pl.Float64}
    counts = tidy.filter(pl.col("metric").str.starts_with(READ_PREFIX) & pl.col("value").is_not_null())
    if counts.height == 0:
        return pl.DataFrame(schema=schema)
    per_lang = {lang: {k: int(v) for k, v in g.group_by("metric").agg(pl.col("value").sum()).iter_rows()}
                for (lang,), g in counts.group_by("eval_lang")}
    rows = []
    for lang in [*[x for x in cells.eval_langs if x in per_lang], "all"]:
        c = {k: sum(d.get(f"{READ_PREFIX}{k}", 0) for d in (per_lang.values() if lang == "all" else [per_lang[lang]]))
             for k in READ_COUNTS}
        # Complied vs not, read × judged: κ, its interval and both rates come from this 2 × 2 table alone.
        truth = [COMPLIED] * (c["complied_both"] + c["complied_read_only"]) + \
            [REFUSED] * (c["complied_judged_only"] + c["complied_neither"])
        pred = [COMPLIED] * c["complied_both"] + [REFUSED] * c["complied_read_only"] + \
            [COMPLIED] * c["complied_judged_only"] + [REFUSED] * c["complied_neither"]
        a = agreement(truth, pred)
        na = c["non_answer_read"]
        rows.append({"eval_lang": lang, "n": a["n"], "kappa": a["kappa"], "kappa_ci_low": a["kappa_ci_low"],
                     "kappa_ci_high": a["kappa_ci_high"], "rate_read": a["label_rate"], "rate_judged": a["judge_rate"],
                     "rate_error": a["rate_error"], "non_answer_read": na,
                     "non_answer_recall": c["non_answer_found"] / na if na else None})
    return pl.DataFrame(rows, schema=schema)


# Beside κ and accuracy (evaluate.judge_agreement's tidy rows): κ's interval, the error of the compliance rate
# the judge reports on hand-labelled answers, non-answer recall, and the XSTest figure beside it.
VALIDITY_FIGURES = ("kappa_ci_low", "kappa_ci_high", "rate_error", "non_answer_recall", "xstest_kappa")


def _first(tidy: pl.DataFrame, metric: str, lang: str) -> float | None:
    m = metric_long(tidy, metric).filter((pl.col("eval_lang") == lang) & pl.col("value").is_not_null())
    return m["value"].first() if m.height else None


def back_translation(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Per cell × eval language: the share of answers actually back-translated, the routes they took
    and the translator failures (answers judged as written, flagged)."""
    share = metric_long(tidy, "judge/bt_share").select(*ID_COLS, "eval_lang", pl.col("value").alias("bt_share"),
                                                       pl.col("n").alias("answers"))
    failed = metric_long(tidy, "judge/bt_failed").select("cell", "eval_lang",
                                                          pl.col("value").cast(pl.Int64).alias("bt_failed"))
    routes = (tidy.filter(pl.col("metric").str.starts_with(BT_ROUTE_PREFIX))
              .with_columns(pl.col("metric").str.strip_prefix(BT_ROUTE_PREFIX).alias("route"))
              .group_by("cell", "eval_lang").agg(pl.col("route").sort().str.join(", ").alias("route")))
    out = share.join(failed, on=["cell", "eval_lang"], how="left").join(routes, on=["cell", "eval_lang"], how="left")
    return _order(out.select(*ID_COLS, "eval_lang", "answers", "bt_share", "bt_failed", "route"), cells)


def judges_between(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """Per eval language (cells pooled by summing): agreement between the two configured judges."""
    schema = {"eval_lang": pl.String, "answers": pl.Int64, "agree_share": pl.Float64,
              "kappa_between_mean": pl.Float64, "disagreements": pl.Int64}
    dis = metric_long(tidy, "judges/disagreements")
    if dis.height == 0:
        return pl.DataFrame(schema=schema)
    ag = metric_long(tidy, "judges/agree_share").select("cell", "eval_lang", pl.col("value").alias("agree"))
    ka = metric_long(tidy, "judges/kappa_between").select("cell", "eval_lang", pl.col("value").alias("kappa"))
    j = dis.select("cell", "eval_lang", pl.col("value").alias("dis"), "n").join(ag, on=["cell", "eval_lang"]).join(
        ka, on=["cell", "eval_lang"], how="left")
    out = j.group_by("eval_lang").agg(
        pl.col("n").sum().alias("answers"), ((pl.col("agree") * pl.col("n")).sum() / pl.col("n").sum()).alias("agree_share"),
        pl.col("kappa").mean().alias("kappa_between_mean"), pl.col("dis").sum().cast(pl.Int64).alias("disagreements"))
    lrank = {c: i for i, c in enumerate(cells.eval_langs)}
    return out.sort(pl.col("eval_lang").replace_strict(lrank, default=len(lrank), return_dtype=pl.Int64)).select(list(schema))


def stats_config(ctx: dict[str, Any]) -> dict[str, Any]:
    """The study's stats section (alpha, contrasts, equivalence margin) from the report context's config,
    the defaults (pipelines.config.StatsConfig) where a context has none (a sweep directory alone)."""
    s = (ctx.get("config") or {}).get("stats") or {}
    return {"alpha": float(s.get("alpha", ALPHA)), "contrasts": list(s.get("contrasts") or DEFAULT_CONTRASTS),
            "equivalence_margin": float(s.get("equivalence_margin", EQUIVALENCE_MARGIN))}
