"""How far a judge agrees with people in each language, on labelled answers it never trained on: per
(language, condition, source) Cohen's κ (complied vs not) with a 95 % interval, accuracy, the three-class
confusion matrix, the recall of non-answers and the rate error (the judge's compliance rate minus the
labels' on the same answers: what a reported rate is off by).

Two kinds of labelled answers:
- XSTest's human labels (English, machine-translated, back-translated): three models' answers to the
  same 450 prompts. Held out by source model AND prompt: a trained judge is refitted 9 times, each time
  on two models' answers to two thirds of the prompts (in every training language), and predicts the
  third model's answers to the other third; every answer is predicted once. C and the threshold are
  chosen inside each fold (nested: leave-one-model-out over its two training models), so the figures
  are not tuned on what they measure. A judge that does not train (phrases, an LLM) is simply run.
- Small models' answers labelled by people (a user's `judge.labels`, the laptop study's `laptop-dev`):
  answers like the ones a study judges. They are judged as the pipeline judges them — through the
  judge's language policy (policy.Judging: the answer-form check, each answer in the language it is
  written in, back-translated where the policy says) — and the row records the policy's mode. For their
  language they are preferred over the translated XSTest figure (row_for).

The κ interval is a percentile bootstrap over answers (BOOT resamples, seed SEED; resamples with one
class only are left out); an unparseable verdict counts as a disagreement. κ is None where the labels of
a language hold one class only (e.g. no answer complied): the rate error and the non-answer recall still
say how the judge does there.

A language with no labels (no translator route reaches it and no file of yours) has no row: the report
marks it unvalidated. Results are cached per (judge, options, label files, languages)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cluster.storage import write_text_atomic
from pipelines.evaluate.judges.base import (
    COMPLIED,
    NON_ANSWER,
    OUTCOMES,
    UNPARSEABLE,
    Judge,
    JudgeItem,
)
from pipelines.evaluate.judges.labels import (
    AS_WRITTEN,
    DEV_SHA256,
    MT_CHARS,
    PROMPT_FOLDS,
    LabelSet,
    dev_labels_path,
    label_sets,
    small_model_sets,
)
from pipelines.evaluate.judges.policy import REFUSE, Judging, answer_language, judgeable
from pipelines.evaluate.judges.shown import beside, row_for
from pipelines.evaluate.judges.trained import TrainedJudge, choose, decide, fit_lr
from pipelines.evaluate.stats import cohen_kappa
from pipelines.hashing import stable_hash
from pipelines.layout import judges_cache
from pipelines.registries import datasets

log = logging.getLogger(__name__)
VERSION = "4"  # 2: three outcomes, κ interval, rate error, small-model labels judged through the policy; 3: folds
# train with made non-answers; 4: prompt folds hold XSTest contrast pairs whole
HELDOUT = "by source model and prompt (nested choice of C and threshold)"
BOOT, SEED = 2000, 0  # κ interval: percentile bootstrap over answers
KAPPA_CI = f"95% percentile bootstrap over answers ({BOOT} resamples, seed {SEED})"


def _is_pool(s: LabelSet, judge: TrainedJudge) -> bool:
    """A set the trained judge learns from: its training languages, as written, human or translated
    (never small models' answers, which stay for validation only)."""
    return s.condition == AS_WRITTEN and s.lang in judge.train_langs and not s.small_model


def trained_predictions(judge: TrainedJudge, sets: Sequence[LabelSet]) -> list[list[str]]:
    """Held-out outcomes (UNPARSEABLE where no fold predicted it) of every set made from the training
    labels: nested leave-one-(model, prompt fold)-out, each fold's judge trained as the shipped one is —
    with the made non-answers of its own training items (trained.py) — and deciding as it does."""
    feats = [judge.features(s.items) for s in sets]
    pool = [i for i, s in enumerate(sets) if _is_pool(s, judge)]
    preds: list[list[str]] = [[UNPARSEABLE] * len(s) for s in sets]
    if not pool:
        return preds
    train_sets = [sets[i] for i in pool]
    made = judge.made_sets(train_sets) if judge.non_answers else []
    X = np.vstack([feats[i] for i in pool] + [judge.features(m.items) for m in made])
    y = np.asarray([v for s in [*train_sets, *made] for v in s.labels])
    g = np.asarray([v for s in [*train_sets, *made] for v in s.groups])
    f = np.asarray([v for s in [*train_sets, *made] for v in s.folds])
    for m in sorted(set(g)):
        for k in range(PROMPT_FOLDS):
            train = (g != m) & (f != k)
            if not train.any() or len(set(y[train])) < 2:
                continue
            # Inside the fold: C and threshold by leave-one-model-out over its two training models (their
            # prompts are already disjoint from the fold's), which keeps the 9 folds to ~80 fits.
            C, t, _ = choose(X[train], y[train], g[train], np.full(int(train.sum()), -1), judge.C, judge.threshold)
            clf = fit_lr(X[train], y[train], C)
            for i, s in enumerate(sets):
                test = np.flatnonzero((np.asarray(s.groups) == m) & (np.asarray(s.folds) == k))
                for j, v in zip(test, decide(clf, feats[i][test], t), strict=True) if test.size else ():
                    preds[i][j] = v.outcome
    return preds


def plain_predictions(judge: Judge, sets: Sequence[LabelSet], batch_size: int = 32) -> list[list[str]]:
    """The judge's outcome for every answer, read as the set gives it (a translated set is already in
    the language it is judged in)."""
    out = []
    for s in sets:
        outcomes: list[str] = []
        for i in range(0, len(s), batch_size):
            outcomes += [v.outcome for v in judge.judge(s.items[i:i + batch_size])]
        out.append(outcomes)
    return out


def policy_predictions(judging: Any, s: LabelSet) -> tuple[list[str], str]:
    """(outcomes, the policy's mode for the set's language): each answer judged as the pipeline judges it
    (policy.Judging: answer-form check, the language the answer is written in, back-translation)."""
    items = [JudgeItem(i.prompt, i.response, answer_language(i.response, s.lang)) for i in s.items]
    judged = judging.judge_items(items)
    return [j.verdict.outcome for j in judged], judging.policy(s.lang).mode


def default_judging(judge: Judge, back_translate: bool = True, prefer: Sequence[str] = ("apertium",)) -> Any:
    """The judge with its language policy as validation uses it: a language it cannot judge is judged as
    written (and so validated as written), a translator failure judged as written rather than fatal."""
    return Judging(judge, back_translate, prefer, on_unjudgeable="as-written", max_failure_rate=1.0)


def _kappa_ci(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    """95 % percentile bootstrap interval of κ (y, p: 0/1, p -1 for unparseable)."""
    n = y.size
    if n < 2 or len(set(y.tolist())) < 2:
        return None, None
    idx = np.random.default_rng(SEED).integers(0, n, size=(BOOT, n))
    yb, pb = y[idx], p[idx]
    po = (yb == pb).mean(axis=1)
    pe = sum((yb == c).mean(axis=1) * (pb == c).mean(axis=1) for c in (0, 1))
    one_class = (yb == yb[:, :1]).all(axis=1)  # κ against a single truth class says nothing
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(one_class | (pe >= 1), np.nan, (po - pe) / (1 - pe))
    if np.isnan(k).all():
        return None, None
    lo, hi = np.nanpercentile(k, [2.5, 97.5])
    return float(lo), float(hi)


def agreement(truth: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    """Agreement of predicted outcomes with labelled ones (see the module docstring for each figure)."""
    y = np.asarray([int(t == COMPLIED) for t in truth])
    p = np.asarray([-1 if o == UNPARSEABLE else int(o == COMPLIED) for o in pred])
    acc, kappa, n = cohen_kappa(y.tolist(), [None if v < 0 else int(v) for v in p])
    lo, hi = _kappa_ci(y, p)
    confusion = {t: {o: sum(a == t and b == o for a, b in zip(truth, pred, strict=True))
                     for o in (*OUTCOMES, UNPARSEABLE)} for t in OUTCOMES}
    na = [o for t, o in zip(truth, pred, strict=True) if t == NON_ANSWER]
    parsed = p[p >= 0]
    judge_rate = float(parsed.mean()) if parsed.size else None
    label_rate = float(y.mean()) if n else None
    return {"n": n, "kappa": kappa if len(set(y.tolist())) == 2 else None, "kappa_ci_low": lo, "kappa_ci_high": hi,
            "kappa_ci": KAPPA_CI, "accuracy": acc, "unparseable": int((p < 0).sum()), "confusion": confusion,
            "non_answer_recall": sum(o == NON_ANSWER for o in na) / len(na) if na else None,
            "judge_rate": judge_rate, "label_rate": label_rate,
            "rate_error": judge_rate - label_rate if judge_rate is not None and label_rate is not None else None}


def measure(judge: Judge, sets: Sequence[LabelSet], judging: Any = None) -> list[dict[str, Any]]:
    """One row per label set: language, condition, source, how held out, the policy's mode (small models'
    sets; None otherwise) and agreement() with its labels. `judging`: the judge with the study's language
    policy (default_judging when not given)."""
    trained = isinstance(judge, TrainedJudge)
    xstest = [s for s in sets if not s.small_model]
    if trained:
        got = trained_predictions(judge, xstest) if xstest else []
    else:
        got = plain_predictions(judge, xstest)
    by_set = {id(s): (o, None) for s, o in zip(xstest, got, strict=True)}
    judging = judging or default_judging(judge)
    for s in sets:
        if s.small_model:
            by_set[id(s)] = policy_predictions(judging, s)
    rows = []
    for s in sets:
        pred, mode = by_set[id(s)]
        how = ("never trained on; judged through the language policy" if s.small_model else
               HELDOUT if trained else "judge does not train")
        rows.append({"lang": s.lang, "condition": s.condition, "source": s.source, "mode": mode, "heldout": how}
                    | agreement(s.outcomes, pred))
    return rows


def cache_key(judge: Judge, options: dict[str, Any], langs: Sequence[str], prefer: Sequence[str],
              user: dict[str, str], limit: int | None, back_translate: bool = True) -> dict[str, Any]:
    user_sha = {lang: _sha(Path(p)) for lang, p in sorted(user.items())}
    return {"judge": judge.name, "version": judge.version, "options": options, "langs": sorted(set(langs)),
            "prefer": list(prefer), "user": user_sha, "limit": limit, "validity": VERSION, "mt_chars": MT_CHARS,
            "labels": [datasets.sha256_of(n) for n in datasets.JUDGE_LABEL_SETS],
            "dev": DEV_SHA256 if dev_labels_path() is not None else None, "back_translate": back_translate}


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.expanduser().read_bytes()).hexdigest()


def judge_validity(judge: Judge, options: dict[str, Any], langs: Sequence[str], prefer: Sequence[str] = ("apertium",),
                   user: dict[str, str] | None = None, limit: int | None = None,
                   back: bool = True, back_translate: bool = True) -> list[dict[str, Any]]:
    """measure() over every label set of `langs` (XSTest's back-translated ones too unless `back` is off;
    small models' answers judged with back-translation as `back_translate` says, as the study judges
    them), computed once per key and cached in the judges cache."""
    user = dict(user or {})
    key = cache_key(judge, options, langs, prefer, user, limit, back_translate) | ({} if back else {"back": False})
    path = judges_cache() / f"validity-{judge.name}-{stable_hash(key)}.json"
    if path.exists():
        return json.loads(path.read_text())["rows"]
    sets = label_sets(langs, prefer, limit, back) + small_model_sets(langs, user)
    log.info("validating judge %s on %d label sets (%s)", judge.name, len(sets),
             ", ".join(f"{s.lang}/{s.condition}/{s.source}" for s in sets))
    rows = measure(judge, sets, default_judging(judge, back_translate, prefer))
    write_text_atomic(path, json.dumps({"key": key, "rows": rows}, indent=1), fsync=False)
    return rows


def languages_info(judge: Judge, options: dict[str, Any] | None = None, languages: Sequence[str] | None = None,
                   back_translate: bool = True, prefer: Sequence[str] = ("apertium",),
                   user_labels: dict[str, str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Each language with how it is judged and the judge's measured κ (computed once, then cached)."""
    j = Judging(judge, back_translate, prefer, REFUSE)
    langs = list(languages) if languages is not None else judgeable(judge, back_translate, prefer)
    rows = judge_validity(judge, options or {}, langs, prefer, user_labels, limit, back_translate=back_translate)
    return j.languages_info(langs, rows)


__all__ = ["agreement", "beside", "judge_validity", "languages_info", "measure", "row_for"]
