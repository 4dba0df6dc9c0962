"""How far a judge agrees with people in each language: Cohen's κ and accuracy per (language, condition)
on labelled answers it never trained on.

Held out by source model AND prompt: the labels are three models' answers to the same 450 XSTest
prompts, so a trained judge is refitted 9 times, each time on two models' answers to two thirds of the
prompts (in every training language), and predicts the third model's answers to the other third, in
English, machine-translated (as written) and back-translated; every answer is predicted once. C and the
threshold are chosen inside each fold (nested: leave-one-model-out over its two training models), so the
figures are not tuned on what they measure. A
judge that does not train (phrases, an LLM) is simply run on every answer. A user's own labels (in
`judge.labels`) were never trained on and are judged by the shipped judge.

A language with no labels (no translator route reaches it and no file of yours) has no row: the report
marks it unvalidated. Results are cached per (judge, options, label files, languages)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluate.judges import Judge
from pipelines.evaluate.judges.labels import (
    AS_WRITTEN,
    BACK_TRANSLATED,
    HUMAN,
    MT_CHARS,
    PROMPT_FOLDS,
    LabelSet,
    label_sets,
)
from pipelines.evaluate.judges.trained import TrainedJudge, choose, fit_lr, proba
from pipelines.evaluate.stats import cohen_kappa
from pipelines.hashing import stable_hash
from pipelines.layout import judges_cache
from pipelines.registries import datasets

log = logging.getLogger(__name__)
VERSION = "1"
HELDOUT = "by source model and prompt (nested choice of C and threshold)"


def _is_pool(s: LabelSet, judge: TrainedJudge) -> bool:
    """A set the trained judge learns from: its training languages, as written, human or translated
    (never a user's file, which stays for validation only)."""
    return s.condition == AS_WRITTEN and s.lang in judge.train_langs and not s.source.startswith("user:")


def trained_predictions(judge: TrainedJudge, sets: Sequence[LabelSet]) -> list[np.ndarray]:
    """Held-out labels (1/0) of every set: nested leave-one-(model, prompt fold)-out for the sets made
    from the training labels, the shipped judge for a user's sets."""
    feats = [judge.features(s.items) for s in sets]
    pool = [i for i, s in enumerate(sets) if _is_pool(s, judge)]
    X = np.vstack([feats[i] for i in pool])
    y = np.asarray([v for i in pool for v in sets[i].labels])
    g = np.asarray([v for i in pool for v in sets[i].groups])
    f = np.asarray([v for i in pool for v in sets[i].folds])
    preds = [np.full(len(s), -1) for s in sets]
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
                if s.source.startswith("user:"):
                    continue
                test = (np.asarray(s.groups) == m) & (np.asarray(s.folds) == k)
                if test.any():
                    preds[i][test] = (proba(clf, feats[i][test]) >= t).astype(int)
    for i, s in enumerate(sets):
        if s.source.startswith("user:"):
            preds[i] = np.asarray([v.label for v in judge.judge(s.items)])
    return preds


def plain_predictions(judge: Judge, sets: Sequence[LabelSet], batch_size: int = 32) -> list[list[int | None]]:
    out = []
    for s in sets:
        labels: list[int | None] = []
        for i in range(0, len(s), batch_size):
            labels += [v.label for v in judge.judge(s.items[i:i + batch_size])]
        out.append(labels)
    return out


def measure(judge: Judge, sets: Sequence[LabelSet]) -> list[dict[str, Any]]:
    """One row per label set: language, condition, source, n, κ, accuracy, unparseable, how held out."""
    trained = isinstance(judge, TrainedJudge)
    preds = trained_predictions(judge, sets) if trained else plain_predictions(judge, sets)
    rows = []
    for s, p in zip(sets, preds, strict=True):
        pl_ = [None if (v is None or int(v) < 0) else int(v) for v in p]
        acc, kappa, n = cohen_kappa(s.labels, pl_)
        rows.append({"lang": s.lang, "condition": s.condition, "source": s.source, "n": n, "kappa": kappa,
                     "accuracy": acc, "unparseable": sum(v is None for v in pl_),
                     "heldout": (HELDOUT if trained and not s.source.startswith("user:") else
                                 "never trained on" if trained else "judge does not train")})
    return rows


def cache_key(judge: Judge, options: dict[str, Any], langs: Sequence[str], prefer: Sequence[str],
              user: dict[str, str], limit: int | None) -> dict[str, Any]:
    user_sha = {lang: _sha(Path(p)) for lang, p in sorted(user.items())}
    return {"judge": judge.name, "version": judge.version, "options": options, "langs": sorted(set(langs)),
            "prefer": list(prefer), "user": user_sha, "limit": limit, "validity": VERSION, "mt_chars": MT_CHARS,
            "labels": [datasets.sha256_of(n) for n in datasets.JUDGE_LABEL_SETS]}


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.expanduser().read_bytes()).hexdigest()


def judge_validity(judge: Judge, options: dict[str, Any], langs: Sequence[str], prefer: Sequence[str] = ("apertium",),
                   user: dict[str, str] | None = None, limit: int | None = None,
                   back: bool = True) -> list[dict[str, Any]]:
    """measure() over every label set of `langs` (back-translated ones too unless `back` is off), computed
    once per key and cached in the judges cache."""
    user = dict(user or {})
    key = cache_key(judge, options, langs, prefer, user, limit) | ({} if back else {"back": False})
    path = judges_cache() / f"validity-{judge.name}-{stable_hash(key)}.json"
    if path.exists():
        return json.loads(path.read_text())["rows"]
    sets = label_sets(langs, prefer, user, limit, back)
    log.info("validating judge %s on %d label sets (%s)", judge.name, len(sets),
             ", ".join(f"{s.lang}/{s.condition}" for s in sets))
    rows = measure(judge, sets)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "rows": rows}, indent=1))
    tmp.replace(path)
    return rows


def row_for(rows: Sequence[dict[str, Any]], lang: str, mode: str) -> dict[str, Any] | None:
    """The validity row that matches how `lang` is judged (mode from policy.py): back-translated labels
    for a back-translated language, as-written ones otherwise; a user's own labels before machine-
    translated ones (people wrote them in that language). None: unvalidated."""
    condition = BACK_TRANSLATED if mode == "back-translate" else AS_WRITTEN
    mine = [r for r in rows if r["lang"] == lang and r["condition"] == condition and r["n"]]
    mine.sort(key=lambda r: (not r["source"].startswith("user:"), r["source"] != HUMAN))
    return mine[0] if mine else None
