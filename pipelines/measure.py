"""Stage 5, measure: compliance rate per eval language from the judged answers."""

from __future__ import annotations

import polars as pl


def compliance_by_lang(judged: pl.DataFrame) -> pl.DataFrame:
    """One row per eval language: n, unparseable, compliant, compliance_rate (over parseable labels;
    unparseable answers are counted and reported, never silently dropped)."""
    return (
        judged.group_by("lang", maintain_order=True)
        .agg(
            pl.len().alias("n"),
            pl.col("label").is_null().sum().alias("unparseable"),
            (pl.col("label") == 1).sum().alias("compliant"),
        )
        .with_columns((pl.col("compliant") / (pl.col("n") - pl.col("unparseable"))).alias("compliance_rate"))
    )


def metric_dict(table: pl.DataFrame) -> dict[str, float]:
    """Stable MLflow metric names."""
    out: dict[str, float] = {}
    for row in table.iter_rows(named=True):
        lang = row["lang"]
        out[f"safety/compliance_rate/{lang}"] = float(row["compliance_rate"] or 0.0)
        out[f"safety/n/{lang}"] = float(row["n"])
        out[f"safety/unparseable/{lang}"] = float(row["unparseable"])
    return out
