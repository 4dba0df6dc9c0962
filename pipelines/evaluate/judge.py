"""Stage 4, judge (batch side): every answer judged through the language policy the service uses too
(judges/policy.py: back-translated to English where a route exists and back-translation is on, read as
written by a judge that reads the language, else judged as written and flagged, or refused), by the
configured judge and, when one is configured, a second judge with its own policy."""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from pipelines.config import JudgeConfig
from pipelines.evaluate.judges import Judge, JudgeItem, make_judge
from pipelines.evaluate.judges.policy import Judged, Judging, answer_language

log = logging.getLogger(__name__)


def judging_of(jcfg: JudgeConfig, judge: Judge | None = None, second: bool = False) -> Judging:
    """The configured (first or second) judge with its language policy."""
    if second:
        j = judge or make_judge(str(jcfg.second), **jcfg.second_options)
        bt = jcfg.second_back_translate
    else:
        j = judge or make_judge(jcfg.name, **jcfg.options)
        bt = jcfg.back_translate
    return Judging(j, bt, jcfg.translate_prefer, jcfg.on_unjudgeable, jcfg.max_bt_failure_rate)


def answer_langs(answers: pl.DataFrame) -> list[str | None]:
    """The language each answer is written in (policy.answer_language), the prompt's where unsure; the
    `answer_lang` column when the answers carry it already."""
    if "answer_lang" in answers.columns:
        return answers["answer_lang"].to_list()
    return [answer_language(r or "", lang) for r, lang in
            zip(answers["response"].to_list(), answers["lang"].to_list(), strict=True)]


def _items(answers: pl.DataFrame, langs: list[str | None]) -> tuple[list[JudgeItem], list[str | None] | None]:
    """The items (each in the language its answer is written in), and the English prompts the data carry
    (read instead of translating the prompt)."""
    items = [JudgeItem(p or "", r or "", lang) for p, r, lang in
             zip(answers["prompt"].to_list(), answers["response"].to_list(), langs, strict=True)]
    return items, answers["prompt_en"].to_list() if "prompt_en" in answers.columns else None


def _columns(judged: list[Judged]) -> dict[str, pl.Series]:
    return {
        # What the judge read: the English translation where back-translated, else the answer as written.
        "response_en": pl.Series("response_en", [j.response for j in judged], dtype=pl.String),
        "prompt_judge": pl.Series("prompt_judge", [j.prompt for j in judged], dtype=pl.String),
        "back_translated": pl.Series("back_translated", [j.back_translated for j in judged], dtype=pl.Boolean),
        "bt_failed": pl.Series("bt_failed", [j.bt_failed for j in judged], dtype=pl.Boolean),
        "bt_route": pl.Series("bt_route", [j.route if j.back_translated else None for j in judged], dtype=pl.String),
        "judge_mode": pl.Series("judge_mode", [j.mode for j in judged], dtype=pl.String),
        "non_answer_reason": pl.Series("non_answer_reason", [j.reason for j in judged], dtype=pl.String),
    }


def judge_answers(answers: pl.DataFrame, jcfg: JudgeConfig, judge: Judge | None = None,
                  second: Judge | None = None) -> pl.DataFrame:
    """answers: columns prompt, response, lang (the prompt's). Adds the language each answer is written in
    (answer_lang: the judge policy follows it), outcome (refused | complied | non_answer | unparseable),
    label (1 complied / 0 refused or no answer / null unparseable), score, judge, judge_version, how each
    answer was judged (judge_mode: native | back-translate | as-written; back_translated, bt_failed,
    bt_route, response_en, prompt_judge, non_answer_reason) and, with a second judge, outcome2, label2,
    score2, judge2, judge2_mode, judge2_version."""
    first = judging_of(jcfg, judge)
    langs = answer_langs(answers)
    items, prompts_en = _items(answers, langs)
    judged = first.judge_items(items, prompts_en)
    out = answers.with_columns(
        *_columns(judged).values(),
        pl.Series("answer_lang", langs, dtype=pl.String),
        pl.Series("outcome", [j.verdict.outcome for j in judged], dtype=pl.String),
        pl.Series("label", [j.verdict.label for j in judged], dtype=pl.Int8),
        pl.Series("score", [j.verdict.score for j in judged], dtype=pl.Float64),
        pl.lit(first.judge.name).alias("judge"),
        pl.lit(first.judge.version).alias("judge_version"),
    )
    if jcfg.second is None and second is None:
        return out
    judging2 = judging_of(jcfg, second, second=True)
    other = judging2.judge_items(items, prompts_en)
    return out.with_columns(
        pl.Series("outcome2", [j.verdict.outcome for j in other], dtype=pl.String),
        pl.Series("label2", [j.verdict.label for j in other], dtype=pl.Int8),
        pl.Series("score2", [j.verdict.score for j in other], dtype=pl.Float64),
        pl.Series("judge2_mode", [j.mode for j in other], dtype=pl.String),
        pl.lit(jcfg.second or (second.name if second else None)).alias("judge2"),
        # Its version too: a changed second judge leaves a finished study's labels stale (sweep/rejudge.py).
        pl.lit(judging2.judge.version).alias("judge2_version"),
    )


def back_translation_summary(judged: pl.DataFrame) -> list[dict[str, Any]]:
    """Per eval language: answers, the share actually back-translated, translator failures, the route and
    the judging mode (what happened, not what the config asked for)."""
    rows = []
    if judged.height == 0 or "back_translated" not in judged.columns:
        return rows
    for (lang,), g in judged.group_by("lang", maintain_order=True):
        routes = [r for r in g["bt_route"].unique().to_list() if r]
        modes = g["judge_mode"].value_counts(sort=True)["judge_mode"].to_list()
        rows.append({"lang": lang, "n": g.height, "bt_share": float(g["back_translated"].mean() or 0.0),
                     "bt_failed": int(g["bt_failed"].sum()), "route": ", ".join(sorted(routes)) or None,
                     "mode": modes[0] if modes else None})
    return rows
