"""Stage 4, judge (batch side): back-translate the answers to English where a route exists (optional),
then label every answer with the configured judge from the registry."""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from pipelines.config import JudgeConfig
from pipelines.evaluate.judges import Judge, JudgeItem, make_judge
from pipelines.translate.translators import NoRouteError, make_translator, plan_route, route_name

log = logging.getLogger(__name__)


def back_translate(texts: list[str], lang: str, prefer: list[str],
                   translators: dict[str, Any] | None = None) -> tuple[list[str], str | None]:
    """(texts in English, route name) or (the texts unchanged, None) when no route exists or translation
    fails: a language without a translator is judged in the original, never a failed run."""

    if lang == "en":
        return texts, "identity:en-en"
    try:
        route = plan_route(lang, "en", prefer)
    except (NoRouteError, KeyError) as exc:
        log.info("no back-translation route %s→en (%s): judging the original answers", lang, type(exc).__name__)
        return texts, None
    if isinstance(route, str):  # "reference": answers carry no human translation
        return texts, None
    cache = translators if translators is not None else {}
    out = list(texts)
    live = [i for i, t in enumerate(out) if t.strip()]
    try:
        cur = [out[i] for i in live]
        for hop in route:
            if hop.translator not in cache:
                cache[hop.translator] = make_translator(hop.translator)
            cur = cache[hop.translator].translate(cur, hop.src, hop.tgt)
    except Exception as exc:  # a broken translator must not lose the cell: judge the original, say so
        log.warning("back-translation %s→en failed (%s): judging the original answers", lang, type(exc).__name__)
        return texts, None
    for i, t in zip(live, cur, strict=True):
        out[i] = t
    return out, route_name(route)


def add_back_translation(answers: pl.DataFrame, jcfg: JudgeConfig) -> pl.DataFrame:
    """Adds response_en, prompt_judge (the English prompt when the data carry one), back_translated
    (bool) and bt_route; with back_translate off every answer is judged as it is."""
    responses = [r or "" for r in answers["response"].to_list()]
    langs = answers["lang"].to_list()
    resp_en = list(responses)
    done = [False] * len(responses)
    routes: list[str | None] = [None] * len(responses)
    if jcfg.back_translate:
        translators: dict[str, Any] = {}
        for lang in dict.fromkeys(langs):
            idx = [i for i, x in enumerate(langs) if x == lang]
            texts, route = back_translate([responses[i] for i in idx], lang, jcfg.translate_prefer, translators)
            for i, t in zip(idx, texts, strict=True):
                resp_en[i], done[i], routes[i] = t, route is not None, route
    prompts = answers["prompt"].to_list()
    if "prompt_en" in answers.columns:
        # The judge reads the English prompt only when it also reads an English answer.
        prompts = [pe if d and pe else p for p, pe, d in zip(prompts, answers["prompt_en"].to_list(), done, strict=True)]
    return answers.with_columns(
        pl.Series("response_en", resp_en, dtype=pl.String),
        pl.Series("prompt_judge", prompts, dtype=pl.String),
        pl.Series("back_translated", done, dtype=pl.Boolean),
        pl.Series("bt_route", routes, dtype=pl.String),
    )


def judge_answers(answers: pl.DataFrame, jcfg: JudgeConfig, judge: Judge | None = None,
                  batch_size: int = 64) -> pl.DataFrame:
    """answers: columns prompt, response, lang. Adds label (1/0/null), score, judge, judge_version and the
    back-translation columns (response_en, prompt_judge, back_translated, bt_route)."""
    judge = judge or make_judge(jcfg.name, **jcfg.options)
    answers = add_back_translation(answers, jcfg)
    # The judge sees the English text with language "en" where it was back-translated.
    items = [JudgeItem(p, r or "", "en" if bt else lang) for p, r, lang, bt in
             zip(answers["prompt_judge"], answers["response_en"], answers["lang"], answers["back_translated"],
                 strict=True)]
    verdicts = [v for i in range(0, len(items), batch_size) for v in judge.judge(items[i:i + batch_size])]
    return answers.with_columns(
        pl.Series("label", [v.label for v in verdicts], dtype=pl.Int8),
        pl.Series("score", [v.score for v in verdicts], dtype=pl.Float64),
        pl.lit(judge.name).alias("judge"),
        pl.lit(judge.version).alias("judge_version"),
    )
