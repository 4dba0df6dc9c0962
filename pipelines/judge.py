"""Stage 4, judge (batch side): label every answer with the configured judge from the registry."""

from __future__ import annotations

import polars as pl

from pipelines.config import JudgeConfig
from pipelines.registries.judges import Judge, JudgeItem, make_judge


def judge_answers(answers: pl.DataFrame, jcfg: JudgeConfig, judge: Judge | None = None,
                  batch_size: int = 64) -> pl.DataFrame:
    """answers: columns prompt, response, lang. Adds label (1/0/null), score, judge, judge_version."""
    judge = judge or make_judge(jcfg.name, **jcfg.options)
    items = [JudgeItem(p, r or "", lang) for p, r, lang in
             zip(answers["prompt"], answers["response"], answers["lang"], strict=True)]
    verdicts = [v for i in range(0, len(items), batch_size) for v in judge.judge(items[i:i + batch_size])]
    return answers.with_columns(
        pl.Series("label", [v.label for v in verdicts], dtype=pl.Int8),
        pl.Series("score", [v.score for v in verdicts], dtype=pl.Float64),
        pl.lit(judge.name).alias("judge"),
        pl.lit(judge.version).alias("judge_version"),
    )
