"""A fine-tuned condition against its base model, prompt by prompt: what the sweep's head computes from
the judged labels of the base cell and of every seed of one condition (model, fine-tune language,
epochs), as tidy rows for each seed's cell.

The unit of a label here is a 0/1 indicator per prompt (for compliance: 1 = complied, 0 = refused or no
answer; for over-refusal: 1 = refused), null where the judge could not read the answer; the caller turns
its label encoding into that. Per seed (one fine-tuning run), descriptive:

- `delta/<rate>`: the change tuned − base with Newcombe's paired interval, `delta/<rate>/p_value` its
  exact McNemar test, `delta/<rate>/discordance` the share of prompts that moved either way (what power
  needs);
- for compliance, the difference of changes against English, paired on MultiJail's parallel prompts
  (the same id in every language): `contrast/vs_en` per eval language X (change in X − change in en)
  and `contrast/outside_en` (mean change over the non-English eval languages − change in en), each with
  its exact sign-flip p-value over prompts.

Seeds pooled (the same rows on every seed's cell): `…/prompt_se`, the prompt-sampling SE of the
seed-averaged differences (stats.seed_level adds it to the spread over seeds), and with several seeds
`…/p_value_seeds`, the exact sign-flip test of those averages over prompts (descriptive). The condition's own test, across seeds, is computed in the
report (pipelines.report.tables.conditions) from the per-seed rows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from pipelines.evaluate.stats import Z95, is_number, newcombe_ci, pair_counts, sign_flip_exact

ENGLISH = "en"
OUTSIDE_EN = "outside_en"  # the eval_lang of the contrast over every non-English eval language
Row = dict[str, Any]


def _row(lang: str, metric: str, value: float, lo: float | None = None, hi: float | None = None,
         n: int | None = None) -> Row:
    return {"lang": lang, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "n": n}


def differences(base: pl.DataFrame, tuned: pl.DataFrame) -> pl.DataFrame:
    """(id, lang, base, tuned, d = tuned − base) for the prompts both cells labelled, in the base cell's
    prompt order. Inputs have columns id, lang, label (0/1 float, null = unparseable)."""
    j = base.join(tuned, on=["id", "lang"], suffix="_ft", how="inner", maintain_order="left")
    j = j.filter(pl.col("label").is_not_null() & pl.col("label_ft").is_not_null())
    return j.select("id", "lang", pl.col("label").alias("base"), pl.col("label_ft").alias("tuned"),
                    (pl.col("label_ft") - pl.col("label")).alias("d"))


def _prompt_se(d: np.ndarray) -> float:
    return float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")


def seed_rows(diff: pl.DataFrame, rate: str) -> list[Row]:
    """One run's change per eval language: Newcombe interval, exact McNemar p, discordance."""
    out = []
    for (lang,), g in diff.group_by("lang", maintain_order=True):
        c = pair_counts(g["base"].to_list(), g["tuned"].to_list())
        lo, hi = newcombe_ci(c)
        p = sign_flip_exact(g["d"].to_numpy())  # on 0/1 pairs: exact McNemar
        out += [_row(lang, f"delta/{rate}", c.delta, lo, hi, c.n), _row(lang, f"delta/{rate}/p_value", p, n=c.n),
                _row(lang, f"delta/{rate}/discordance", c.discordance, n=c.n)]
    return out


def contrast_frame(diff: pl.DataFrame) -> pl.DataFrame:
    """Per prompt id: the change in each non-English language minus the change in English (parallel
    prompts: same id), long (id, lang, D), plus lang = outside_en: the mean over the non-English
    languages of the prompts every one of them labelled, minus the English change."""
    wide = diff.pivot(on="lang", index="id", values="d", aggregate_function="first")
    if ENGLISH not in wide.columns:
        return pl.DataFrame(schema={"id": pl.String, "lang": pl.String, "D": pl.Float64})
    others = [c for c in wide.columns if c not in ("id", ENGLISH)]
    parts = [wide.select("id", pl.lit(x).alias("lang"), (pl.col(x) - pl.col(ENGLISH)).alias("D")) for x in others]
    if others:
        every = wide.filter(pl.all_horizontal([pl.col(x).is_not_null() for x in others]))
        parts.append(every.select("id", pl.lit(OUTSIDE_EN).alias("lang"),
                                  (pl.mean_horizontal(others) - pl.col(ENGLISH)).alias("D")))
    return pl.concat(parts).filter(pl.col("D").is_not_null())


def contrast_rows(con: pl.DataFrame) -> list[Row]:
    """One run's difference of changes against English per eval language (and outside English): mean,
    a normal interval over prompts, and the exact sign-flip p-value over prompts."""
    out = []
    for (lang,), g in con.group_by("lang", maintain_order=True):
        d = g["D"].to_numpy()
        m, se = float(d.mean()), _prompt_se(d)
        lo, hi = (m - Z95 * se, m + Z95 * se) if is_number(se) else (None, None)
        out += [_row(lang, "contrast/vs_en", m, lo, hi, d.size),
                _row(lang, "contrast/vs_en/p_value", sign_flip_exact(d), n=d.size)]
    return out


def pooled_rows(frames: list[pl.DataFrame], col: str, metric: str) -> list[Row]:
    """Seeds pooled per prompt: `…/prompt_se`, the prompt-sampling SE of the seed-averaged differences
    (what the seeds share, the base's answers on this sample: its part of the condition's SE, see
    stats.seed_level), and with several seeds `…/p_value_seeds`, the exact sign-flip test of those
    averages over prompts — descriptive: it asks whether these prompts moved on average over these runs,
    not whether another run would move them (that is the test over seeds)."""
    avg = pl.concat(frames).group_by("id", "lang", maintain_order=True).agg(pl.col(col).mean())
    out = []
    for (lang,), g in avg.group_by("lang", maintain_order=True):
        d = g[col].to_numpy()
        out.append(_row(lang, f"{metric}/prompt_se", _prompt_se(d), n=d.size))
        if len(frames) > 1:
            out.append(_row(lang, f"{metric}/p_value_seeds", sign_flip_exact(d), n=d.size))
    return out


def condition_rows(base: pl.DataFrame, seeds: dict[str, pl.DataFrame], rate: str = "compliance_rate",
                   contrasts: bool = True) -> dict[str, list[Row]]:
    """Per seed's cell id: its rows (see the module doc), the pooled ones repeated on every seed's cell."""
    diffs = {cid: differences(base, t) for cid, t in seeds.items()}
    cons = {cid: contrast_frame(d) for cid, d in diffs.items()} if contrasts else {}
    pooled = pooled_rows(list(diffs.values()), "d", f"delta/{rate}")
    pooled += pooled_rows(list(cons.values()), "D", "contrast/vs_en") if cons else []
    return {cid: seed_rows(diffs[cid], rate) + (contrast_rows(cons[cid]) if cons else []) + pooled
            for cid in seeds}
