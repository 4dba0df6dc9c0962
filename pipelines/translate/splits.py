"""The translated splits on disk: datasets/<hash>/<split>/lang=<xx>/part-*.parquet, the columns each split
keeps, and reading one language of one split with the QA policy applied."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import read_manifest, write_parquet_atomic
from pipelines.translate.plan import Job
from pipelines.translate.qa import policy_mask, qa_table

FIELDS = {"benign": ["instruction", "input", "output"], "benign_heldout": ["instruction", "input", "output"],
          "eval": ["prompt"], "eval_safe": ["prompt"]}
# The columns each split keeps (the fine-tune and eval stages read these; QA and bookkeeping follow).
COLUMNS = {
    "benign": ["id", "source", "category", "lang", "src_lang", "instruction", "input", "output", "idx", "route"],
    "benign_heldout": ["id", "source", "category", "lang", "src_lang", "instruction", "input", "output", "idx",
                       "route"],
    "eval": ["id", "source", "category", "lang", "src_lang", "prompt", "prompt_en", "idx", "route"],
    "eval_safe": ["id", "source", "category", "lang", "src_lang", "prompt", "prompt_en", "idx", "route"],
}
EXTRA_COLUMNS = ["qa_flags", "qa_lang", "qa_lang_score", "qa_chrf", "tr_segments", "tr_new"]
TEXT_COLUMNS = ["instruction", "input", "output", "prompt", "prompt_en"]



def qa_policy(qa_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: qa_cfg[k] for k in ("drop_flags", "require_lang_id", "min_chrf")}



def write_split(df: pl.DataFrame, directory: Path) -> None:
    write_parquet_atomic(df.drop("lang").sort("idx"), directory / "part-00000.parquet")


def summaries(tmp: Path, jobs: list[Job], qa_cfg: dict[str, Any]) -> tuple[dict, dict, dict, list]:

    counts: dict[str, dict[str, int]] = defaultdict(dict)
    qa_counts: dict[str, dict[str, Any]] = defaultdict(dict)
    qa_rows: list[dict[str, Any]] = []
    seg = {"segments": 0, "segments_translated": 0}
    policy = qa_policy(qa_cfg)
    for kind, lang in dict.fromkeys((j.kind, j.lang) for j in jobs):
        df = read_raw(tmp, kind, lang)
        counts[kind][lang] = df.height
        table = qa_table(df, policy)
        qa_counts[kind][lang] = table
        qa_rows.append({"split": kind, "lang": lang, **{k: v for k, v in table.items()}})
        seg["segments"] += int(df["tr_segments"].sum())
        seg["segments_translated"] += int(df["tr_new"].sum())
    return dict(counts), dict(qa_counts), seg, qa_rows


def read_raw(ds_path: Path, kind: str, lang: str) -> pl.DataFrame:
    files = sorted((ds_path / kind / f"lang={lang}").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {kind} data for language '{lang}' under {ds_path}")
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed").sort("idx").with_columns(
        pl.lit(lang).alias("lang"))


def read_split(ds_path: Path, kind: str, lang: str, qa_filter: bool | dict[str, Any] | None = None) -> pl.DataFrame:
    """One language of one split, in source order.

    qa_filter: None (default) or True applies the QA policy the data sets were built with (the config's
    translate.qa: drop_flags, require_lang_id, min_chrf, recorded in the manifest); False returns every
    row, flagged ones included; a dict applies that policy instead."""
    df = read_raw(ds_path, kind, lang)
    if qa_filter is False:
        return df
    if isinstance(qa_filter, dict):
        policy = qa_filter
    else:
        manifest = read_manifest(ds_path) or {}
        policy = manifest.get("qa_policy") or {}
    if not policy:
        return df

    return df.filter(policy_mask(df, policy))
