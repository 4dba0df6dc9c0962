"""Planning, before Ray or any model: every (split, language[, source]) job gets a route — a chain of
translator hops, a human "reference" translation the data set carries, or "native" data already in the
language — so an unknown language or a pair without a route fails before any work, naming what exists."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from pipelines.config import StudyConfig
from pipelines.errors import NoRouteError
from pipelines.registries import datasets
from pipelines.secrets import hash_view
from pipelines.translate.translators import REFERENCE, Hop, make_translator, plan_route, route_name

NATIVE = "native"


@dataclass
class Job:
    kind: str  # benign | benign_heldout | eval | eval_safe
    lang: str
    rows: list[dict[str, Any]]
    route: list[Hop] | str  # hops, "reference" or "native"
    back: list[Hop] | None = None  # reverse route for the round-trip QA (None: none exists)
    source: str = ""
    idx_offset: int = 0  # eval_safe holds several sources: idx stays unique within (split, language)


def _back_route(cfg: StudyConfig, route: list[Hop] | str, src: str, tgt: str) -> list[Hop] | None:
    if not cfg.translate.qa.round_trip or route == NATIVE or src == tgt:
        return None
    try:
        back = plan_route(tgt, src, [p for p in cfg.translate.prefer if p != REFERENCE])
    except NoRouteError:
        return None
    return back if isinstance(back, list) else None


class Plan(list[Job]):
    """The planned jobs, plus the (split, language, source) pairs left out for want of a route: a safe
    source or a held-out benign language may lack one where the unsafe prompts and the fine-tuning set
    may not (they fail instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[dict[str, str]] = []


def _spread(rows: list[dict[str, Any]], n: int) -> datasets.Rows:
    """n rows spread over the whole list (XSTest is ordered by prompt type: its first n are one type),
    keeping the loader's record of malformed input lines."""
    step = max(1.0, len(rows) / n)
    picked = [rows[int(i * step)] for i in range(min(n, len(rows)))]
    return datasets.Rows(picked, getattr(rows, "malformed", []))


def _sample(rows: list[dict[str, Any]], n: int, seed: int) -> datasets.Rows:
    """n rows drawn at random with `seed`, kept in the set's order: the unsafe prompts stand for the whole
    set (MultiJail's first rows are one source and a few categories). The seed is data.eval.sample_seed,
    the drawn ids are the eval split's, and both enter the data sets' hash."""
    picked = sorted(random.Random(seed).sample(range(len(rows)), n)) if n < len(rows) else range(len(rows))
    return datasets.Rows([rows[i] for i in picked], getattr(rows, "malformed", []))


def plan_jobs(cfg: StudyConfig) -> Plan:
    """Every (split, language[, source]) job with its route, planned before any work so that a language
    without a route fails at once, naming what is available."""
    bd, ed = cfg.data.benign, cfg.data.eval
    prefer = cfg.translate.prefer
    jobs = Plan()
    english = datasets.load(bd.source, limit=bd.n)
    if not english:
        raise datasets.DataError(f"benign source {bd.source} has no rows")
    for lang in cfg.ft_langs:
        if lang in bd.native:
            jobs.append(Job("benign", lang, datasets.load(bd.native[lang], limit=bd.n), NATIVE, source=bd.native[lang]))
        else:
            src = english[0]["lang"]
            route = plan_route(src, lang, prefer)
            jobs.append(Job("benign", lang, english, route, _back_route(cfg, route, src, lang), source=bd.source))

    def eval_jobs(kind: str, name: str, prompts: list[dict[str, Any]], offset: int) -> list[Job]:
        if not prompts:
            raise datasets.DataError(f"eval source {name} has no rows")
        out = []
        for lang in cfg.eval_langs:
            def has_ref(tgt: str) -> bool:
                # A human translation is used when the data set carries one for this language; a prompt
                # that lacks it (upstream gaps) is flagged missing_ref rather than machine-translated.
                return any(tgt in r["refs"] for r in prompts)

            try:
                route = plan_route("en", lang, prefer, has_ref)
            except NoRouteError as e:
                if kind == "eval":
                    raise
                jobs.skipped.append({"split": kind, "lang": lang, "source": name, "reason": str(e)})
                continue
            out.append(Job(kind, lang, prompts, route, _back_route(cfg, route, "en", lang), name, offset))
        return out

    jobs += eval_jobs("eval", ed.harmful, _sample(datasets.load(ed.harmful), ed.n_harmful, ed.sample_seed), 0)
    offset = 0
    for name in ed.safe if ed.n_safe else []:
        prompts = _spread(datasets.load(name), ed.n_safe)
        jobs += eval_jobs("eval_safe", name, prompts, offset)
        offset += len(prompts)
    _check_safe_coverage(cfg, jobs)
    jobs += _heldout_jobs(cfg, jobs.skipped)
    return jobs


def _check_safe_coverage(cfg: StudyConfig, jobs: Plan) -> None:
    """Over-refusal is measured in every eval language or the study says why not before any work."""
    ed = cfg.data.eval
    if not (ed.safe and ed.n_safe):
        return
    missing = [lang for lang in cfg.eval_langs if not any(j.kind == "eval_safe" and j.lang == lang for j in jobs)]
    if missing:

        raise NoRouteError(
            f"no over-refusal prompts for eval language(s) {missing}: no source in data.eval.safe={ed.safe} "
            f"has a translation route there with translate.prefer={cfg.translate.prefer}. Add hplt_oasst to "
            f"data.eval.safe (human translations in {', '.join(datasets.HPLT_OASST_LANGS)}), add a translator that "
            "reaches them to translate.prefer, or set data.eval.n_safe=0 to measure no over-refusal.")


def _heldout_jobs(cfg: StudyConfig, skipped: list[dict[str, str]]) -> list[Job]:
    """Held-out benign examples per eval language for perplexity: the rows of the benign source after the
    first data.benign.n (which fine-tuning uses), from the language's native source when the config has
    one, else translated like the fine-tuning rows; a language with no route is left out (recorded)."""
    bd, k = cfg.data.benign, cfg.evaluate.n_benign_ppl
    if k == 0:
        return []

    def after_ft(name: str) -> list[dict[str, Any]]:
        return list(datasets.load(name, limit=bd.n + k))[bd.n:]

    english = after_ft(bd.source)
    out = []
    for lang in cfg.eval_langs:
        name = bd.native.get(lang, bd.source)
        rows = english if name == bd.source else after_ft(name)
        if not rows:
            # An empty held-out split used to be skipped silently, and capability then fell back to
            # English WikiText alone (issue #17): fail here, naming the numbers and the fixes.
            have = len(datasets.load(name))
            raise datasets.DataError(
                f"the benign_heldout split for {lang} would be empty: {name} has {have} rows and "
                f"data.benign.n={bd.n} of them are for fine-tuning. Lower data.benign.n (at most "
                f"{max(0, have - 1)}), give a larger source (data.benign.source=file:/path/x.jsonl), or set "
                "evaluate.n_benign_ppl=0 to measure no held-out perplexity")
        if lang in bd.native:
            out.append(Job("benign_heldout", lang, rows, NATIVE, source=name))
            continue
        src = rows[0]["lang"]
        try:
            route = plan_route(src, lang, cfg.translate.prefer)
        except NoRouteError as e:
            skipped.append({"split": "benign_heldout", "lang": lang, "source": name, "reason": str(e)})
            continue
        out.append(Job("benign_heldout", lang, rows, route, _back_route(cfg, route, src, lang), source=name))
    return out


def translator_options(cfg: StudyConfig, name: str) -> dict[str, Any]:
    return dict(cfg.translate.options.get(name, {}))


def translators_used(jobs: list[Job]) -> list[str]:
    names = set()
    for j in jobs:
        for route in (j.route, j.back):
            if isinstance(route, list):
                names.update(h.translator for h in route)
    return sorted(names)


def datasets_key(cfg: StudyConfig, jobs: list[Job]) -> dict[str, Any]:
    """Everything the translated data sets depend on; its hash names the output directory. Batch size and
    concurrency are left out: they change how fast, not what."""
    translators = translators_used(jobs)
    sources = sorted({cfg.data.benign.source, cfg.data.eval.harmful, *cfg.data.eval.safe,
                      *cfg.data.benign.native.values()})
    return {
        "data": cfg.data.model_dump(mode="json"),
        "ft_langs": cfg.ft_langs,
        "eval_langs": cfg.eval_langs,
        "benign_heldout": cfg.evaluate.n_benign_ppl,
        "routes": {f"{j.kind}/{j.lang}" + (f"/{j.source}" if j.kind == "eval_safe" else ""): route_name(j.route)
                   for j in jobs},
        "sources": {s: datasets.sha256_of(s) for s in sources},
        "translator_versions": {t: make_translator(t, **translator_options(cfg, t)).cache_version()
                                for t in translators},
        "translate": {"segment_chars": cfg.translate.segment_chars,
                      # A translator's API key is no part of what the data sets depend on.
                      "options": hash_view(cfg.translate.options), "qa": cfg.translate.qa.model_dump(mode="json")},
    }


