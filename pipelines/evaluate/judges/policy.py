"""How an answer in a given language is judged: the one code path for the pipeline (evaluate/judge.py) and
the judge service (serving/).

For a language L and a judge:
- L is English → judged as written ("native").
- back-translation is on and a translator route L→en exists → translated to English, then judged
  ("back-translate"); each translation cached (pipelines/translate/cache.py).
- else the judge reads L as written (`Judge.native_languages` None or containing L) → "native".
- else an English-only judge and no route: "refuse" raises UnjudgeableLanguageError listing the languages
  it can judge (the service's default); "as-written" judges it anyway, recorded as such and reported
  unvalidated (the pipeline's default, so a study keeps the language and its report says what it is).

`Judging.judge_items` applies the policy per item; a translator failure is counted per language and
flagged on the item (judged as written), and past `max_failure_rate` it raises BackTranslationError.
The answer-form check (form.py) is applied to the answers as written, before any translation, for every
judge that does not detect non-answers itself.

The language an answer is judged in is the language it is written in (`answer_language`: detected, the
prompt's where detection is unsure): a Chinese prompt answered in English is judged, and validated, as
English."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import DataError, NoRouteError, SafedriftError
from pipelines.evaluate.judges import JUDGES
from pipelines.evaluate.judges.base import Judge, JudgeItem, Verdict
from pipelines.evaluate.judges.form import with_form
from pipelines.evaluate.judges.labels import check_user_labels
from pipelines.evaluate.judges.shown import beside, row_for
from pipelines.layout import translation_cache
from pipelines.registries.langid import detect_lang
from pipelines.registries.languages import LANGUAGES
from pipelines.translate.batch import TranslateBatch
from pipelines.translate.translators import Hop, plan_route, route_name

log = logging.getLogger(__name__)

NATIVE, BACK_TRANSLATE, AS_WRITTEN, REFUSE = "native", "back-translate", "as-written", "refuse"
UNKNOWN = "und"  # an item whose language the caller did not give


class UnjudgeableLanguageError(SafedriftError, ValueError):
    """No way to judge a language: the judge does not read it and no translator reaches English."""

    def __init__(self, language: str, judge: str, judgeable: Sequence[str]) -> None:
        self.language, self.judgeable = language, sorted(judgeable)
        super().__init__(
            f"judge '{judge}' cannot judge language '{language}': it reads only "
            f"{sorted(self.judgeable)} (as written or back-translated to English here). Install a translator "
            f"route {language}→en (judge.translate_prefer), use a multilingual judge (trained-e5), or send "
            "one of those languages")


class BackTranslationError(SafedriftError, RuntimeError):
    """Too many answers of one language could not be back-translated."""


@dataclass(frozen=True)
class JudgePolicy:
    language: str
    mode: str  # native | back-translate | as-written | refuse
    route: tuple[Hop, ...] = ()

    @property
    def route_name(self) -> str | None:
        return route_name(list(self.route)) if self.route else None


@dataclass(frozen=True)
class Judged:
    verdict: Verdict
    language: str
    mode: str
    back_translated: bool  # the judge read an English translation
    bt_failed: bool  # a route existed but the translator failed: judged as written, flagged
    route: str | None
    prompt: str  # what the judge read
    response: str
    reason: str | None = None  # why the answer is no answer (form.py: empty | echo | repetition), if it is one


# fastText's confidence below which an answer's language is taken from its prompt: short or broken text
# (a 32-token answer, an echo) is often misread.
LID_MIN_SCORE = 0.5


def answer_language(response: str, fallback: str | None) -> str | None:
    """The registered language `response` is written in, or `fallback` (the prompt's language) where the
    answer is empty, detection is unsure, or the detected language is not registered."""
    try:
        label, score = detect_lang(response or "")
    except Exception:  # an odd string must not fail the judging
        return fallback
    if not label or score < LID_MIN_SCORE:
        return fallback
    if fallback in LANGUAGES and LANGUAGES.get(fallback).lid_matches(label):
        return fallback
    return next((c for c in LANGUAGES.names() if LANGUAGES.get(c).lid_matches(label)), fallback)


def _route_to_en(language: str, prefer: Sequence[str]) -> list[Hop] | None:
    try:
        route = plan_route(language, "en", list(prefer))
    except (NoRouteError, KeyError):
        return None
    return route if isinstance(route, list) else None  # "reference": answers carry no human translation


def judge_policy(language: str | None, judge: Judge | type[Judge], back_translate: bool = True,
                 prefer: Sequence[str] = ("apertium",), on_unjudgeable: str = REFUSE) -> JudgePolicy:
    """How `judge` judges an answer in `language` (see the module docstring); raises
    UnjudgeableLanguageError for a language it cannot judge when on_unjudgeable is "refuse"."""
    lang = language or UNKNOWN
    if lang in ("en", UNKNOWN):
        return JudgePolicy(lang, NATIVE if lang == "en" else AS_WRITTEN)
    if back_translate and (route := _route_to_en(lang, prefer)) is not None:
        return JudgePolicy(lang, BACK_TRANSLATE, tuple(route))
    native = judge.native_languages
    if native is None or lang in native:
        return JudgePolicy(lang, NATIVE)
    if on_unjudgeable == REFUSE:
        raise UnjudgeableLanguageError(lang, judge.name, judgeable(judge, back_translate, prefer))
    return JudgePolicy(lang, AS_WRITTEN)


def judgeable(judge: Judge | type[Judge], back_translate: bool = True, prefer: Sequence[str] = ("apertium",)) -> list[str]:
    """Every registered language this judge can judge here (natively or through a route)."""
    native = judge.native_languages
    out = []
    for code in LANGUAGES.names():
        if code == "en" or native is None or code in native or (back_translate and _route_to_en(code, prefer)):
            out.append(code)
    return out


class Judging:
    """A judge with its language policy: what the pipeline and the service call."""

    def __init__(self, judge: Judge, back_translate: bool = True, prefer: Sequence[str] = ("apertium",),
                 on_unjudgeable: str = REFUSE, max_failure_rate: float = 0.0, cache_dir: Path | None = None,
                 batch_size: int = 64) -> None:
        self.judge = judge
        self.back_translate = back_translate
        self.prefer = list(prefer)
        self.on_unjudgeable = on_unjudgeable
        self.max_failure_rate = max_failure_rate
        self.cache_dir = cache_dir or translation_cache()
        self.batch_size = batch_size
        self._policies: dict[str, JudgePolicy] = {}
        self._tb: Any = None

    def policy(self, language: str | None) -> JudgePolicy:
        lang = language or UNKNOWN
        if lang in self._policies:
            return self._policies[lang]
        pol = judge_policy(lang, self.judge, self.back_translate, self.prefer, self.on_unjudgeable)
        # Only registered codes are kept: the judge service takes any code a client sends, and keeping
        # each grew memory without bound (about 13 MiB per 51,200 made-up codes, issue 30).
        if lang in (UNKNOWN, "en") or lang in LANGUAGES:
            self._policies[lang] = pol
        return pol

    def _translate(self, texts: list[str], route: Sequence[Hop]) -> list[str]:

        if self._tb is None:
            self._tb = TranslateBatch(str(self.cache_dir), {}, {})
        hops = [{"translator": h.translator, "src": h.src, "tgt": h.tgt} for h in route]
        return self._tb.translate_texts(texts, hops)[0]

    def _translate_each(self, texts: list[str], route: Sequence[Hop]) -> list[str | None]:
        """Translations, None where the translator failed: a failed batch is retried text by text so one
        bad answer does not cost its neighbours."""
        try:
            return list(self._translate(texts, route))
        except Exception as exc:  # any translator failure is counted, never silently judged as written
            log.warning("back-translation batch failed (%s): retrying answer by answer", type(exc).__name__)
        out: list[str | None] = []
        for t in texts:
            try:
                out.append(self._translate([t], route)[0])
            except Exception:
                out.append(None)
        return out

    def prepare(self, items: Sequence[JudgeItem], prompts_en: Sequence[str | None] | None = None
                ) -> list[tuple[JudgeItem, JudgePolicy, bool, bool]]:
        """Per item: (what the judge reads, its policy, back-translated, translation failed). Policies are
        checked for every language first, so an unjudgeable language fails before any translation. An
        English prompt given in `prompts_en` (the data's own) is used instead of translating the prompt."""
        policies = [self.policy(i.language) for i in items]
        given = list(prompts_en) if prompts_en is not None else [None] * len(items)
        out: list[Any] = [(i, p, False, False) for i, p in zip(items, policies, strict=True)]
        for lang in dict.fromkeys(p.language for p in policies):
            pol = self.policy(lang)
            if pol.mode != BACK_TRANSLATE:
                continue
            idx = [k for k, p in enumerate(policies) if p.language == lang]
            texts = [items[k].response or "" for k in idx] + [items[k].prompt or "" for k in idx if not given[k]]
            live = [j for j, t in enumerate(texts) if t.strip()]
            got = self._translate_each([texts[j] for j in live], pol.route)
            done: list[str | None] = list(texts)
            for j, t in zip(live, got, strict=True):
                done[j] = t
            prompt_of = iter(done[len(idx):])
            for pos, k in enumerate(idx):
                r_en = done[pos]
                p_en = given[k] or next(prompt_of)
                if p_en is None or r_en is None:
                    out[k] = (items[k], pol, False, True)
                else:
                    out[k] = (JudgeItem(p_en, r_en, "en"), pol, True, False)
            self._check_failures(lang, [out[k][3] for k in idx])
        return out

    def _check_failures(self, lang: str, failed: list[bool]) -> None:
        k = sum(failed)
        if k and k / len(failed) > self.max_failure_rate:
            raise BackTranslationError(
                f"{k} of {len(failed)} answers in '{lang}' could not be back-translated to English (more than "
                f"judge.max_bt_failure_rate = {self.max_failure_rate}); check the translator "
                f"({self._policies[lang].route_name}) or raise the threshold")
        if k:
            log.warning("%d of %d answers in '%s' not back-translated (translator failed): judged as written, "
                        "flagged", k, len(failed), lang)

    def judge_items(self, items: Sequence[JudgeItem], prompts_en: Sequence[str | None] | None = None
                    ) -> list[Judged]:
        """Every item judged by its language's policy (see the module docstring), in order."""
        prepared = self.prepare(items, prompts_en)
        reads = [p[0] for p in prepared]
        verdicts: list[Verdict] = []
        for s in range(0, len(reads), self.batch_size):
            verdicts += self.judge.judge(reads[s:s + self.batch_size])
        reasons: list[str | None] = [None] * len(items)
        if not self.judge.detects_non_answers:
            verdicts, reasons = with_form(items, verdicts)  # on the answers as written, never a translation
        return [Judged(v, pol.language, pol.mode if not failed else AS_WRITTEN, bt, failed, pol.route_name,
                       read.prompt, read.response, why)
                for v, (read, pol, bt, failed), why in zip(verdicts, prepared, reasons, strict=True)]

    def languages_info(self, languages: Sequence[str] | None = None,
                       validity: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Per language: how it is judged (mode, route) and the judge's measured κ and accuracy for that
        mode, or validated False where there is nothing to validate on (validity rows from validity.py)."""

        langs = list(languages) if languages is not None else judgeable(self.judge, self.back_translate, self.prefer)
        out = []
        for lang in langs:
            try:
                pol = self.policy(lang)
            except UnjudgeableLanguageError:
                out.append({"language": lang, "mode": REFUSE, "route": None, "validated": False, "kappa": None,
                            "accuracy": None, "n": 0, "labels": None}
                           | dict.fromkeys((*VALIDITY_EXTRA, "xstest", "small_models")))
                continue
            # As written by a judge that does not read the language: validated only by small models'
            # answers judged that same way (row_for).
            r = row_for(validity or [], lang, pol.mode)
            out.append({"language": lang, "mode": pol.mode, "route": pol.route_name, "validated": r is not None,
                        "kappa": r["kappa"] if r else None, "accuracy": r["accuracy"] if r else None,
                        "n": r["n"] if r else 0, "labels": r["source"] if r else None}
                       | {k: r.get(k) if r else None for k in VALIDITY_EXTRA} | beside(validity or [], lang, pol.mode))
        return out


# What a language's validity says beyond κ and accuracy (validity.py: agreement).
VALIDITY_EXTRA = ("kappa_ci_low", "kappa_ci_high", "rate_error", "non_answer_recall", "confusion")


def judge_items(items: Sequence[JudgeItem], judge: Judge, back_translate: bool = True,
                prefer: Sequence[str] = ("apertium",), on_unjudgeable: str = REFUSE,
                max_failure_rate: float = 0.0) -> list[Judged]:
    """Judging(...).judge_items(items) in one call (build a Judging once to keep its translator warm)."""
    return Judging(judge, back_translate, prefer, on_unjudgeable, max_failure_rate).judge_items(items)


def check_judge_config(jcfg: Any, eval_langs: Sequence[str]) -> None:
    """Before any work: every user label file exists and parses (DataError naming the line and the fix),
    its language is registered and evaluated by the study, and with on_unjudgeable "refuse" every eval
    language can be judged by each configured judge (UnjudgeableLanguageError naming the fix)."""

    for lang in jcfg.labels:
        LANGUAGES.check(lang)
        if lang not in eval_langs:
            raise DataError(f"judge.labels.{lang}: the study does not evaluate '{lang}' (eval_langs "
                            f"{list(eval_langs)}): add it to eval_langs or drop it from judge.labels")
    check_user_labels(jcfg.labels)
    if jcfg.on_unjudgeable != REFUSE:
        return
    for name, bt in ((jcfg.name, jcfg.back_translate), (jcfg.second, jcfg.second_back_translate)):
        if name:
            for lang in eval_langs:
                judge_policy(lang, JUDGES.get(name), bt, jcfg.translate_prefer, REFUSE)
