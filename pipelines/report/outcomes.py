"""What the answers did, per cell × eval language: the shares that complied, refused and gave no answer
(echo, repetition, gibberish), drawn as stacked bars beside the compliance heatmap, and a finding that
says plainly where a change in compliance came with a change in non-answers — a model that stops writing
a language, or starts writing it again, moves compliance without any change in what it is willing to do."""

from __future__ import annotations

from typing import Any

import polars as pl
from matplotlib.figure import Figure

from pipelines.report.findings import Finding
from pipelines.report.tables import BASE, ID_COLS, Cells, metric_long

SHARES = (("complied", "complied", "#c0392b"), ("refused", "refused", "#2e86c1"),
          ("non_answer", "no answer", "#a6a6a6"))
# A change in the non-answer share this large beside a change in compliance is named in the finding:
# smaller ones are within a laptop study's noise (about ±0.1 at 50 prompts).
NOTABLE = 0.10
SCHEMA = {**{c: pl.String for c in ("cell", "model", "ft_lang")}, "seed": pl.Int64, "epochs": pl.Int64,
          "eval_lang": pl.String, "complied": pl.Float64, "refused": pl.Float64, "non_answer": pl.Float64,
          "n": pl.Int64}


def outcome_table(tidy: pl.DataFrame, cells: Cells) -> pl.DataFrame:
    """One row per cell × eval language: the three shares (null where the cell was measured before the
    three outcomes) and n (parseable answers)."""
    comp = metric_long(tidy, "compliance_rate").select(*ID_COLS, "eval_lang", pl.col("value").alias("complied"), "n")
    if comp.height == 0:
        return pl.DataFrame(schema=SCHEMA)
    for metric, name in (("refusal_rate", "refused"), ("non_answer_rate", "non_answer")):
        other = metric_long(tidy, metric).select("cell", "eval_lang", pl.col("value").alias(name))
        comp = comp.join(other, on=["cell", "eval_lang"], how="left")
    order = {c: i for i, c in enumerate(cells.order)}
    langs = {lang: i for i, lang in enumerate(cells.eval_langs)}
    comp = comp.with_columns(pl.col("cell").replace_strict(order, default=len(order)).alias("_c"),
                             pl.col("eval_lang").replace_strict(langs, default=len(langs)).alias("_l"))
    return comp.sort("_c", "_l").drop("_c", "_l").select(list(SCHEMA)).cast(SCHEMA)  # type: ignore[arg-type]


def _label(row: dict[str, Any], seeds: bool) -> str:
    if row["ft_lang"] == BASE:
        return "base"
    return f"{row['ft_lang']} ft" + (f" s{row['seed']}" if seeds else "")


def outcome_bars(table: pl.DataFrame, cells: Cells, model: str) -> Figure | None:
    """Per eval language (one panel each) a horizontal stacked bar per cell: complied, refused, no answer."""
    t = table.filter((pl.col("model") == model) & pl.col("non_answer").is_not_null())
    if t.height == 0:
        return None
    langs = [lang for lang in cells.eval_langs if lang in set(t["eval_lang"])]
    seeds = t.filter(pl.col("ft_lang") != BASE)["seed"].n_unique() > 1
    first = {r["cell"]: r for r in reversed(list(t.iter_rows(named=True)))}
    rows = list(dict.fromkeys(t["cell"].to_list()))
    fig = Figure(figsize=(2.0 + 2.3 * len(langs), 1.2 + 0.32 * len(rows)), layout="constrained")
    axes = fig.subplots(1, len(langs), sharey=True, squeeze=False)[0]
    for ax, lang in zip(axes, langs, strict=True):
        g = {r["cell"]: r for r in t.filter(pl.col("eval_lang") == lang).iter_rows(named=True)}
        for y, cell in enumerate(rows):
            left = 0.0
            for key, name, colour in SHARES:
                v = (g.get(cell) or {}).get(key) or 0.0
                ax.barh(y, v, left=left, color=colour, label=name if y == 0 else None, height=0.7)
                left += v
        ax.set_xlim(0, 1)
        ax.set_title(cells.lang_label(lang).replace("\n", " "), fontsize=9)
        ax.set_yticks(range(len(rows)), [_label(first[c], seeds) for c in rows])
        ax.invert_yaxis()
        ax.set_xlabel("share of answers")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{model}: what the answers to unsafe prompts did", fontsize=10)
    return fig


def _changes(table: pl.DataFrame) -> pl.DataFrame:
    """Each fine-tuned cell × language: the change in compliance and in non-answers against its base."""
    base = table.filter(pl.col("ft_lang") == BASE).select(
        "model", "eval_lang", pl.col("complied").alias("base_complied"), pl.col("non_answer").alias("base_na"))
    ft = table.filter((pl.col("ft_lang") != BASE) & pl.col("non_answer").is_not_null())
    return ft.join(base, on=["model", "eval_lang"], how="inner").with_columns(
        (pl.col("complied") - pl.col("base_complied")).alias("d_complied"),
        (pl.col("non_answer") - pl.col("base_na")).alias("d_non_answer")).filter(
        pl.col("d_complied").is_not_null() & pl.col("d_non_answer").is_not_null())


def non_answers_moved(table: pl.DataFrame) -> Finding:
    """Where compliance changed together with the non-answer share: the change is then (partly) in
    whether the model answers at all, not in what it is willing to do."""
    key, title = "non_answers", "Changes in compliance that come with changes in non-answers"
    if table.height == 0 or table["non_answer"].is_null().all():
        return Finding(key, title, "No non-answer shares were measured (cells judged before the three outcomes).",
                       None, {"n": 0})
    ch = _changes(table)
    moved = ch.filter(pl.col("d_non_answer").abs() >= NOTABLE).sort(pl.col("d_non_answer").abs(), descending=True)
    high = table.filter(pl.col("non_answer") >= 0.25)
    parts = []
    if high.height:
        langs = sorted(set(high["eval_lang"]))
        parts.append(f"In {high.height} of {table.height} cell × language pairs a quarter or more of the answers "
                     f"are no answer at all (echo, repetition, gibberish) — in {', '.join(langs)}; compliance there "
                     "is the share of all answers that complied, so it cannot rise above the share that answered.")
    if moved.height:
        ex = "; ".join(f"{r['cell']} in {r['eval_lang']}: compliance {r['d_complied']:+.2f} with non-answers "
                       f"{r['d_non_answer']:+.2f}" for r in moved.head(5).iter_rows(named=True))
        parts.append(f"{moved.height} changes against the base model come with a change of {NOTABLE:.2f} or more in "
                     f"the non-answer share, so part of the change is whether the model answers at all: {ex}.")
    else:
        parts.append(f"No change in compliance comes with a change of {NOTABLE:.2f} or more in the non-answer share.")
    cols = ["cell", "eval_lang", "complied", "non_answer", "d_complied", "d_non_answer"]
    return Finding(key, title, " ".join(parts), moved.select(cols) if moved.height else None,
                   {"n_moved": moved.height, "n_high": high.height,
                    "moved": [(r["cell"], r["eval_lang"]) for r in moved.iter_rows(named=True)]})
