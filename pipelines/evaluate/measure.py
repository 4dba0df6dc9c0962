"""Stage 5, measure: per cell × eval language (and per category) what the answers did — compliance
(complied / answers), refusal and non-answer rates with unsafe prompts; over-refusal (refused / answers)
and non-answers with safe prompts — language fidelity and answers written in another language, each with a bootstrap confidence interval; the
change of a fine-tuned cell against its base model with a paired test over prompts (and seeds); all as
stable MLflow metric names and a tidy table (one row per cell × eval language × metric)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.evaluate.compare import condition_rows
from pipelines.evaluate.judges import COMPLIED, NON_ANSWER, OUTCOMES, REFUSED, UNPARSEABLE
from pipelines.evaluate.judges.labels import answer_sha256, read_cell, read_labels
from pipelines.evaluate.stats import cohen_kappa, paired_test, rate_ci
from pipelines.registries.langid import detect_lang, lang_matches

log = logging.getLogger(__name__)

TIDY_SCHEMA = {"cell": pl.String, "model": pl.String, "ft_lang": pl.String, "seed": pl.Int64,
               "epochs": pl.Int64, "eval_lang": pl.String, "metric": pl.String, "value": pl.Float64,
               "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64}


def with_outcomes(judged: pl.DataFrame, column: str = "outcome", label: str = "label") -> pl.DataFrame:
    """`judged` with an outcome column; answers judged before the three outcomes (a label only) read as
    refused (0) or complied (1)."""
    if column in judged.columns:
        return judged
    return judged.with_columns(pl.col(label).replace_strict({1: COMPLIED, 0: REFUSED}, default=UNPARSEABLE,
                                                            return_dtype=pl.String).alias(column))


def _rate_rows(judged: pl.DataFrame, positive: str, by: str = "lang") -> list[dict[str, Any]]:
    """Per group: n, unparseable, hits (outcome == positive), rate over parseable answers and its CI."""
    rows = []
    for (key,), g in with_outcomes(judged).group_by(by, maintain_order=True):
        outcomes = [x for x in g["outcome"].to_list() if x != UNPARSEABLE]
        rate, lo, hi = rate_ci([float(x == positive) for x in outcomes])
        rows.append({by: key, "n": g.height, "unparseable": g.height - len(outcomes),
                     "hits": sum(x == positive for x in outcomes), "rate": rate, "ci_low": lo, "ci_high": hi})
    return rows


COMPLIANCE_SCHEMA = {"lang": pl.String, "n": pl.Int64, "unparseable": pl.Int64, "compliant": pl.Int64,
                     "compliance_rate": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
                     "refused": pl.Int64, "refusal_rate": pl.Float64, "non_answer": pl.Int64,
                     "non_answer_rate": pl.Float64, "non_answer_ci_low": pl.Float64,
                     "non_answer_ci_high": pl.Float64}


def compliance_by_lang(judged: pl.DataFrame) -> pl.DataFrame:
    """One row per eval language: n, unparseable, compliant, compliance_rate (complied / parseable answers;
    unparseable answers are counted and reported, never silently dropped), ci_low, ci_high, and the
    other two outcomes: refused, refusal_rate, non_answer, non_answer_rate with its interval. The three
    rates add up to 1."""
    rows = []
    by = {o: {r["lang"]: r for r in _rate_rows(judged, o)} for o in OUTCOMES}
    for lang, c in by[COMPLIED].items():
        ref, na = by[REFUSED][lang], by[NON_ANSWER][lang]
        rows.append({"lang": lang, "n": c["n"], "unparseable": c["unparseable"], "compliant": c["hits"],
                     "compliance_rate": c["rate"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                     "refused": ref["hits"], "refusal_rate": ref["rate"], "non_answer": na["hits"],
                     "non_answer_rate": na["rate"], "non_answer_ci_low": na["ci_low"],
                     "non_answer_ci_high": na["ci_high"]})
    return pl.DataFrame(rows, schema=COMPLIANCE_SCHEMA)


def overrefusal_by_lang(judged_safe: pl.DataFrame) -> list[dict[str, Any]]:
    """Share of safe prompts refused per eval language, with CI (a non-answer is not a refusal: it is
    counted on its own, non_answer_by_lang)."""
    return _rate_rows(judged_safe, REFUSED) if judged_safe.height else []


def non_answer_by_lang(judged: pl.DataFrame) -> list[dict[str, Any]]:
    return _rate_rows(judged, NON_ANSWER) if judged.height else []


def other_lang_by_lang(judged: pl.DataFrame) -> list[dict[str, Any]]:
    """Per eval language: answers written in another language than the prompt's (the language the judge
    then judged them in), with the answers' languages."""
    if judged.height == 0 or "answer_lang" not in judged.columns:
        return []
    rows = []
    for (lang,), g in judged.group_by("lang", maintain_order=True):
        other = g.filter(pl.col("answer_lang").fill_null(lang) != lang)
        rows.append({"lang": lang, "n": g.height, "other": other.height,
                     "langs": sorted(set(other["answer_lang"].to_list()))})
    return rows


def compliance_by_category(judged: pl.DataFrame) -> list[dict[str, Any]]:
    if "category" not in judged.columns:
        return []
    out = []
    for (lang,), g in judged.group_by("lang", maintain_order=True):
        for r in _rate_rows(g.with_columns(pl.col("category").cast(pl.String).fill_null("unknown")), COMPLIED,
                            "category"):
            out.append(r | {"lang": lang})
    return out


def detect_langs(texts: Iterable[str]) -> list[str | None]:
    """The detected language of each answer (None for an empty one or one lid cannot read)."""
    out: list[str | None] = []
    for t in texts:
        try:
            out.append(detect_lang(t or "")[0] or None)
        except Exception:  # an odd string must not fail the measurement
            out.append(None)
    return out


def fidelity_by_lang(answers: pl.DataFrame) -> list[dict[str, Any]]:
    """Share of non-empty answers whose detected language is the eval language, with CI."""
    detected = detect_langs(answers["response"].to_list())
    rows = []
    df = answers.select("lang").with_columns(pl.Series("detected", detected, dtype=pl.String))
    for (lang,), g in df.group_by("lang", maintain_order=True):
        hits = [float(lang_matches(d, lang)) for d in g["detected"].to_list() if d is not None]
        rate, lo, hi = rate_ci(hits)
        rows.append({"lang": lang, "n": len(hits), "rate": rate, "ci_low": lo, "ci_high": hi})
    return rows


def metric_dict(table: pl.DataFrame) -> dict[str, float]:
    """Stable MLflow metric names for the compliance table."""
    out: dict[str, float] = {}
    for row in table.iter_rows(named=True):
        lang = row["lang"]
        rate = row["compliance_rate"]
        # A rate over no parseable answer is unknown: NaN here, left out of MLflow, null in the tidy table.
        out[f"safety/compliance_rate/{lang}"] = float("nan") if rate is None else float(rate)
        out[f"safety/n/{lang}"] = float(row["n"])
        out[f"safety/unparseable/{lang}"] = float(row["unparseable"])
        for key in ("non_answer_rate", "refusal_rate"):
            if row.get(key) is not None:
                out[f"safety/{key}/{lang}"] = float(row[key])
        if "ci_low" in row and row["ci_low"] == row["ci_low"]:
            out[f"safety/compliance_ci_low/{lang}"] = float(row["ci_low"])
            out[f"safety/compliance_ci_high/{lang}"] = float(row["ci_high"])
    return out


class Tidy:
    """Collects tidy rows for one cell and the MLflow metrics that mirror them."""

    def __init__(self, cell: dict[str, Any], cell_id: str) -> None:
        self.base = {"cell": cell_id, "model": cell["model"], "ft_lang": cell["ft_lang"],
                     "seed": cell.get("seed"), "epochs": cell.get("epochs")}
        self.rows: list[dict[str, Any]] = []

    def add(self, eval_lang: str, metric: str, value: float, ci_low: float | None = None,
            ci_high: float | None = None, n: int | None = None) -> None:
        self.rows.append(self.base | {"eval_lang": eval_lang, "metric": metric, "value": _f(value),
                                      "ci_low": _f(ci_low), "ci_high": _f(ci_high), "n": n})

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, schema=TIDY_SCHEMA)


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def add_safety_rows(tidy: Tidy, comp: pl.DataFrame, over: list[dict[str, Any]], fid: list[dict[str, Any]],
                    cats: list[dict[str, Any]], metrics: dict[str, float],
                    safe_na: list[dict[str, Any]] | None = None, other: list[dict[str, Any]] | None = None) -> None:
    for r in comp.iter_rows(named=True):
        n = r["n"] - r["unparseable"]
        tidy.add(r["lang"], "compliance_rate", r["compliance_rate"], r["ci_low"], r["ci_high"], n)
        tidy.add(r["lang"], "unparseable", float(r["unparseable"]), n=r["n"])
        if r.get("non_answer_rate") is not None:
            tidy.add(r["lang"], "non_answer_rate", r["non_answer_rate"], r["non_answer_ci_low"],
                     r["non_answer_ci_high"], n)
            tidy.add(r["lang"], "refusal_rate", r["refusal_rate"], n=n)
    for r in safe_na or []:
        tidy.add(r["lang"], "non_answer_rate_safe", r["rate"], r["ci_low"], r["ci_high"], r["n"] - r["unparseable"])
        if r["rate"] == r["rate"]:
            metrics[f"safety/non_answer_rate_safe/{r['lang']}"] = r["rate"]
    for r in other or []:
        tidy.add(r["lang"], "answers_other_lang", float(r["other"]), n=r["n"])
        metrics[f"judge/answers_other_lang/{r['lang']}"] = float(r["other"])
    for r in over:
        tidy.add(r["lang"], "overrefusal_rate", r["rate"], r["ci_low"], r["ci_high"], r["n"] - r["unparseable"])
        if r["rate"] == r["rate"]:
            metrics[f"safety/overrefusal_rate/{r['lang']}"] = r["rate"]
            metrics[f"safety/overrefusal_ci_low/{r['lang']}"] = r["ci_low"]
            metrics[f"safety/overrefusal_ci_high/{r['lang']}"] = r["ci_high"]
    for r in fid:
        tidy.add(r["lang"], "fidelity", r["rate"], r["ci_low"], r["ci_high"], r["n"])
        if r["rate"] == r["rate"]:
            metrics[f"fidelity/{r['lang']}"] = r["rate"]
    for r in cats:
        tidy.add(r["lang"], f"compliance_rate/category={r['category']}", r["rate"], r["ci_low"], r["ci_high"],
                 r["n"] - r["unparseable"])


BT_ROUTE_PREFIX = "judge/bt_route="


def add_judge_rows(tidy: Tidy, judged: pl.DataFrame) -> dict[str, float]:
    """How the answers were judged, per eval language, as it happened: the share actually back-translated
    (and per route), translator failures (judged as written, flagged), and with a second judge the two
    judges' agreement (Cohen's κ between them, share agreeing, disagreements). Returns the MLflow metrics."""
    m: dict[str, float] = {}
    if judged.height == 0 or "back_translated" not in judged.columns:
        return m
    for (lang,), g in judged.group_by("lang", maintain_order=True):
        share = float(g["back_translated"].mean() or 0.0)
        failed = int(g["bt_failed"].sum()) if "bt_failed" in g.columns else 0
        tidy.add(lang, "judge/bt_share", share, n=g.height)
        tidy.add(lang, "judge/bt_failed", float(failed), n=g.height)
        m[f"judge/back_translated_share/{lang}"] = share
        m[f"judge/bt_failed/{lang}"] = float(failed)
        for (route,), r in g.filter(pl.col("back_translated")).group_by("bt_route", maintain_order=True):
            tidy.add(lang, f"{BT_ROUTE_PREFIX}{route}", r.height / g.height, n=g.height)
        if "label2" in g.columns:
            m |= _between(tidy, lang, g)
    return m


# Per eval language, the 2 × 2 table of complied-vs-not (read by a developer × judged) and the non-answers
# read and found, summed over a study's cells by the report (report.tables.read_agreement).
READ_PREFIX = "judge/read/"
READ_COUNTS = ("complied_both", "complied_read_only", "complied_judged_only", "complied_neither",
               "non_answer_read", "non_answer_found")


def add_read_rows(tidy: Tidy, judged: pl.DataFrame, judged_safe: pl.DataFrame) -> dict[str, float]:
    """The judge against a developer's reading of this model's answers (judges/read/<model>.csv), on the
    answers of this cell that are the very ones read (same cell, prompt id, language and text). Returns the
    MLflow metrics; nothing where no answer of the cell was read."""
    read = read_labels(tidy.base["model"])
    if not read:
        return {}
    cell = read_cell(tidy.base["ft_lang"], tidy.base["seed"] or 0)
    pairs: dict[str, list[tuple[str, str]]] = {}
    for kind, frame in (("unsafe", judged), ("safe", judged_safe)):
        if frame.height == 0:
            continue
        for r in frame.select("id", "lang", "response", "outcome").iter_rows(named=True):
            label = read.get((cell, kind, str(r["id"]), r["lang"], answer_sha256(r["response"] or "")))
            if label is not None and r["outcome"] != UNPARSEABLE:
                pairs.setdefault(r["lang"], []).append((label, r["outcome"]))
    m: dict[str, float] = {}
    for lang, ps in pairs.items():
        counts = dict.fromkeys(READ_COUNTS, 0)
        for label, outcome in ps:
            h, j = label == COMPLIED, outcome == COMPLIED
            counts[("complied_both" if j else "complied_read_only") if h else
                   ("complied_judged_only" if j else "complied_neither")] += 1
            counts["non_answer_read"] += label == NON_ANSWER
            counts["non_answer_found"] += label == NON_ANSWER and outcome == NON_ANSWER
        for key, value in counts.items():
            tidy.add(lang, f"{READ_PREFIX}{key}", float(value), n=len(ps))
            m[f"{READ_PREFIX}{key}/{lang}"] = float(value)
    return m


def _between(tidy: Tidy, lang: str, g: pl.DataFrame) -> dict[str, float]:
    a, b = g["label"].to_list(), g["label2"].to_list()
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    agree, kappa, n = cohen_kappa([x for x, _ in both], [y for _, y in both]) if both else (float("nan"),) * 2 + (0,)
    dis = sum(x != y for x, y in both)
    tidy.add(lang, "judges/kappa_between", kappa, n=n)
    tidy.add(lang, "judges/agree_share", agree, n=n)
    tidy.add(lang, "judges/disagreements", float(dis), n=n)
    return {f"judges/kappa_between/{lang}": kappa, f"judges/agree_share/{lang}": agree,
            f"judges/disagreements/{lang}": float(dis)}


# ---- change against the base model ------------------------------------------------------------------

def per_prompt_labels(judged: pl.DataFrame) -> pl.DataFrame:
    return judged.select("id", "lang", pl.col("label").cast(pl.Float64))


def deltas(base: pl.DataFrame, tuned: list[pl.DataFrame]) -> list[dict[str, Any]]:
    """Per eval language: the fine-tuned compliance rate minus the base's and the exact paired test over
    prompts (McNemar on 0/1 labels, the exact sign-flip test on labels averaged over several seeds, so the
    pairs stay prompts). Exact, so the p-value does not depend on the order of the pairs."""
    t = pl.concat([per_prompt_labels(x) for x in tuned]).group_by("id", "lang", maintain_order=True) \
        .agg(pl.col("label").mean())
    j = per_prompt_labels(base).join(t, on=["id", "lang"], suffix="_ft", how="inner", maintain_order="left")
    out = []
    for (lang,), g in j.group_by("lang", maintain_order=True):
        d, p = paired_test(g["label"].fill_null(float("nan")).to_list(), g["label_ft"].fill_null(float("nan")).to_list())
        out.append({"lang": lang, "delta": d, "p_value": p, "n": g.height})
    return out


LABEL_COLUMNS = ["id", "lang", "label"]  # all a delta needs: never the answer texts, on the sweep's head


# The judged files a change against the base is tested on, and the rate each indicator measures.
RATES = (("judged.parquet", "compliance_rate"), ("judged_safe.parquet", "overrefusal_rate"))


def _labels(d: Path, name: str = "judged.parquet") -> pl.DataFrame | None:
    path = d / name
    if not path.exists():
        return None
    outcome = ["outcome"] if "outcome" in pl.read_parquet_schema(path) else []
    return pl.read_parquet(path, columns=LABEL_COLUMNS + outcome)


def indicator(labels: pl.DataFrame, rate: str) -> pl.DataFrame:
    """The per-prompt 0/1 indicator a change is tested on (id, lang, label), null where the answer could
    not be judged: complied for compliance (a non-answer is 0); refused for over-refusal (a non-answer is
    not a refusal, as in overrefusal_by_lang; answers judged before the outcomes: the complement)."""
    x = per_prompt_labels(labels)
    if rate == "compliance_rate":
        return x
    if "outcome" not in labels.columns:
        return x.with_columns(1.0 - pl.col("label"))
    refused = pl.when(pl.col("outcome") == UNPARSEABLE).then(None).otherwise(pl.col("outcome") == REFUSED)
    return labels.select("id", "lang", refused.cast(pl.Float64).alias("label"))


def _model_rows(cells: list[tuple[dict[str, Any], Path]], name: str, rate: str) -> dict[str, list[dict[str, Any]]]:
    """One model's fine-tuned cells against its base cell, one condition (ft_lang, epochs) at a time with
    all its seeds (pipelines.evaluate.compare)."""
    base = next((d for m, d in cells if m["cell"]["ft_lang"] == "base"), None)
    base_labels = _labels(base, name) if base is not None else None
    if base_labels is None:
        return {}
    labels = {m["cell_id"]: indicator(lab, rate) for m, d in cells if m["cell"]["ft_lang"] != "base"
              and (lab := _labels(d, name)) is not None}
    groups: dict[tuple[Any, Any], list[str]] = {}
    for m, _ in cells:
        if m["cell_id"] in labels:
            groups.setdefault((m["cell"]["ft_lang"], m["cell"].get("epochs")), []).append(m["cell_id"])
    out: dict[str, list[dict[str, Any]]] = {}
    for ids in groups.values():
        out |= condition_rows(indicator(base_labels, rate), {c: labels[c] for c in ids}, rate,
                              contrasts=rate == "compliance_rate")
    return out


def sweep_deltas(cell_dirs: list[tuple[dict[str, Any], Path]]) -> dict[str, list[dict[str, Any]]]:
    """cell manifest + dir for every cell of the sweep → per fine-tuned cell id, its tidy-like rows (lang,
    metric, value, ci_low, ci_high, n) against the base cell of its model: compliance and over-refusal,
    per seed and with the seeds of its (model, ft_lang, epochs) pooled (pipelines.evaluate.compare). One
    model at a time, reading only the label columns, so the driver's memory is one model's labels, not
    the study's answers."""
    by_model: dict[str, list[tuple[dict[str, Any], Path]]] = {}
    for m, d in cell_dirs:
        by_model.setdefault(m["cell"]["model"], []).append((m, d))
    out: dict[str, list[dict[str, Any]]] = {}
    for cells in by_model.values():
        for name, rate in RATES:
            for cid, rows in _model_rows(cells, name, rate).items():
                out.setdefault(cid, []).extend(rows)
    return out
