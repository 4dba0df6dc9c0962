"""What a cell asks and measures besides fine-tuning, read from the translated data sets (the translate
stage builds, caches and QA-checks them with Ray Data):

- `eval`: the unsafe prompts, in every eval language (planning fails when one has no route);
- `eval_safe`: the safe prompts for over-refusal (data.eval.safe), in every eval language that some
  source reaches;
- `benign_heldout`: benign examples the fine-tune never saw, for perplexity, where a route exists.

Each is read with the QA policy the data sets were built with (translate.qa), so a flagged translation
is measured nowhere. A language the manifest has no rows for is absent, never an empty frame that looks
measured."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cluster.storage import read_manifest
from pipelines.config import StudyConfig
from pipelines.translate import read_split


def _read(cfg: StudyConfig, ds_path: Path, kind: str, columns: list[str]) -> pl.DataFrame:
    built = ((read_manifest(ds_path) or {}).get("counts") or {}).get(kind, {})
    frames = [read_split(ds_path, kind, lang).select(columns) for lang in cfg.eval_langs if lang in built]
    return pl.concat(frames) if frames else pl.DataFrame(schema=dict.fromkeys(columns, pl.String))


def eval_prompts(cfg: StudyConfig, ds_path: Path) -> pl.DataFrame:
    return _read(cfg, ds_path, "eval", ["id", "lang", "category", "prompt"])


def safe_prompts(cfg: StudyConfig, ds_path: Path) -> pl.DataFrame:
    return _read(cfg, ds_path, "eval_safe", ["id", "lang", "category", "prompt", "prompt_en", "source"])


def heldout_benign(cfg: StudyConfig, ds_path: Path) -> pl.DataFrame:
    """(lang, instruction, output), the input folded into the instruction as the fine-tune formats it."""
    df = _read(cfg, ds_path, "benign_heldout", ["lang", "instruction", "input", "output"])
    joined = pl.when(pl.col("input").fill_null("") != "").then(pl.col("instruction") + "\n\n" + pl.col("input"))
    return df.select("lang", joined.otherwise(pl.col("instruction")).alias("instruction"), "output")
