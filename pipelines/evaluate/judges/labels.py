"""Human-labelled answers in every language a judge is validated in.

- English: the XSTest v2 completions of three models (gpt4, llama2new, mistralinstruct) with their human
  labels (1_full_compliance → complies; full or partial refusal → refuses).
- Machine-translated: the same answers (prompt and response) translated by a route of the configured
  translators (Apertium: en→es, en→es→pt); a label carries over, since translation keeps a refusal a
  refusal. Only the opening MT_CHARS of a response are translated: every judge here reads the opening
  of an answer (the encoders truncate, the phrase judge looks at 160 characters), and it keeps Apertium
  to a few minutes for 1,350 answers.
- Back-translated: a machine-translated set translated back to English, as the pipeline judges it.
- Your own: a JSONL file per language ({prompt, response, label} with label 1 = complies, 0 = refuses;
  optional model and id), named in `judge.labels`, checked when the config loads.

Every translation goes through the translation cache (pipelines/translate/cache.py), under the cache root,
so it is done once per machine."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import DataError, NoRouteError
from pipelines.evaluate.judges import JudgeItem
from pipelines.evaluate.user_sets import read_jsonl
from pipelines.layout import cache_root
from pipelines.registries import datasets
from pipelines.translate.batch import TranslateBatch
from pipelines.translate.translators import Hop, plan_route, route_name

MT_CHARS = 600  # opening characters of a response that are machine-translated (see the module docstring)
PROMPT_FOLDS = 3  # prompt folds crossed with the held-out model (validity.py)
HUMAN = "human"
AS_WRITTEN, BACK_TRANSLATED = "as-written", "back-translated"


@dataclass
class LabelSet:
    """Labelled answers in one language and condition. `groups` is the source model of each answer
    (the held-out unit), `folds` its prompt fold (answers to one prompt share a fold)."""

    lang: str
    condition: str  # as-written | back-translated
    source: str  # human | the translation route | user:<file name>
    items: list[JudgeItem]
    labels: list[int]
    groups: list[str]
    folds: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: Sequence[int]) -> LabelSet:
        return LabelSet(self.lang, self.condition, self.source, [self.items[i] for i in idx],
                        [self.labels[i] for i in idx], [self.groups[i] for i in idx], [self.folds[i] for i in idx])


def prompt_fold(prompt_id: str) -> int:
    """A fixed fold per prompt id (a hash, so it never depends on order)."""
    return int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16) % PROMPT_FOLDS


def spread(n: int, limit: int | None) -> list[int]:
    """Indices of an evenly spread subset (every k-th): the first rows would all be one source model."""
    if limit is None or limit >= n:
        return list(range(n))
    step = n / limit
    return [int(i * step) for i in range(limit)]


def human_labels(limit: int | None = None) -> LabelSet:
    items, labels, groups, folds = [], [], [], []
    for name in datasets.JUDGE_LABEL_SETS:
        for r in datasets.load(name):
            items.append(JudgeItem(r["prompt"], r["response"], "en"))
            labels.append(int(r["label"]))
            groups.append(r["model"])
            folds.append(prompt_fold(r["id"]))
    return LabelSet("en", AS_WRITTEN, HUMAN, items, labels, groups, folds).subset(spread(len(items), limit))


def _opening(text: str, n: int = MT_CHARS) -> str:
    """The first n characters, cut at a word boundary."""
    if len(text) <= n:
        return text
    cut = text[:n]
    return cut[: cut.rfind(" ")] if " " in cut[n // 2:] else cut


def translate_cached(texts: list[str], route: list[Hop]) -> list[str]:
    """Texts through a route of translator hops, segment by segment with the translation cache."""

    tb = TranslateBatch(str(cache_root() / "translation_cache"), {}, {})
    out, _, _ = tb.translate_texts(texts, [{"translator": h.translator, "src": h.src, "tgt": h.tgt} for h in route])
    return out


def _route(src: str, tgt: str, prefer: Sequence[str]) -> list[Hop] | None:
    try:
        route = plan_route(src, tgt, list(prefer))
    except (NoRouteError, KeyError):
        return None
    return route if isinstance(route, list) else None  # "reference": labels carry no human translation


def machine_translated(base: LabelSet, lang: str, prefer: Sequence[str]) -> LabelSet | None:
    """`base` (English) translated into `lang`; None when no route reaches it here."""
    route = _route("en", lang, prefer)
    if route is None:
        return None
    prompts = translate_cached([i.prompt for i in base.items], route)
    responses = translate_cached([_opening(i.response) for i in base.items], route)
    items = [JudgeItem(p, r, lang) for p, r in zip(prompts, responses, strict=True)]
    return LabelSet(lang, AS_WRITTEN, route_name(route), items, list(base.labels), list(base.groups), list(base.folds))


def back_translated(ls: LabelSet, prefer: Sequence[str]) -> LabelSet | None:
    """`ls` translated back into English (the prompt too: the pipeline judges the English prompt)."""
    route = _route(ls.lang, "en", prefer)
    if route is None:
        return None
    prompts = translate_cached([i.prompt for i in ls.items], route)
    responses = translate_cached([i.response for i in ls.items], route)
    items = [JudgeItem(p, r, "en") for p, r in zip(prompts, responses, strict=True)]
    return LabelSet(ls.lang, BACK_TRANSLATED, route_name(route), items, list(ls.labels), list(ls.groups),
                    list(ls.folds))


# ---- your own labels ---------------------------------------------------------------------------------

_FIX = ("each line a JSON object {\"prompt\": str, \"response\": str, \"label\": 1 (complies) or 0 "
        "(refuses)}, optional \"model\" and \"id\"")


def read_user_labels(path: str | Path, lang: str) -> LabelSet:
    """A user's labelled answers in `lang`; DataError naming the file, the line and the fix."""
    p = Path(path).expanduser()
    rows = read_jsonl(p, {"prompt": str, "response": str}, f"judge.labels.{lang}")
    items, labels, groups, folds = [], [], [], []
    for n, rec in enumerate(rows, 1):
        if rec.get("label") not in (0, 1) or isinstance(rec.get("label"), bool):
            raise DataError(f"judge.labels.{lang}: {p} row {n}: 'label' must be 1 (complies) or 0 (refuses), "
                            f"got {rec.get('label')!r}; {_FIX}")
        items.append(JudgeItem(rec["prompt"], rec["response"], lang))
        labels.append(int(rec["label"]))
        groups.append(str(rec.get("model") or "user"))
        folds.append(prompt_fold(str(rec.get("id") or rec["prompt"])))
    if len(set(labels)) < 2:
        raise DataError(f"judge.labels.{lang}: {p} has only label {labels[0]}: agreement (Cohen's κ) needs "
                        "answers that comply and answers that refuse")
    return LabelSet(lang, AS_WRITTEN, f"user:{p.name}", items, labels, groups, folds)


def check_user_labels(labels: dict[str, str]) -> dict[str, int]:
    """Every user label file read once before any work: {language: answers}."""
    return {lang: len(read_user_labels(path, lang)) for lang, path in labels.items()}


def label_sets(langs: Sequence[str], prefer: Sequence[str], user: dict[str, str] | None = None,
               limit: int | None = None, back: bool = True) -> list[LabelSet]:
    """Every labelled set for `langs`: English, each language machine-translated where a route reaches
    it and back-translated where a route returns, and the user's own files (as written and
    back-translated)."""
    en = human_labels(limit)
    out = [en]
    user = user or {}
    for lang in dict.fromkeys(langs):
        if lang == "en":
            continue
        sets = [read_user_labels(user[lang], lang)] if lang in user else []
        mt = machine_translated(en, lang, prefer)
        sets += [mt] if mt is not None else []
        for s in list(sets) if back else []:
            bt = back_translated(s, prefer)
            if bt is not None:
                sets.append(bt)
        out += sets
    return out
