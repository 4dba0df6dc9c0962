"""Stage 1, translate: the benign fine-tuning set and the eval suite in every configured language.

Planning happens first, without Ray or any model: every (split, language) gets a route (a chain of
translator hops, a human "reference" translation the data set carries, "native" data already in the
language), so an unknown language or a pair without a route fails before any work.

Ray Data then carries the rows to translator actors (one translator load per actor, concurrency from
the config capped by the cluster's CPUs/GPUs, a GPU per actor when the translator wants one). An actor
splits each field into sentence segments (line and paragraph structure kept as literal text), looks each
segment up in the translation cache, translates only the misses (one call per hop per batch), writes them
back to the cache, reassembles the texts and runs the quality checks (language ID, empty/truncated/
unchanged, round-trip chrF where a reverse route exists). When every segment is already cached, the
driver does that in-process instead and Ray Data is not needed (a warm rebuild takes seconds).

Splits: benign (the fine-tuning rows, per fine-tune language), eval (unsafe prompts), eval_safe (safe
prompts for over-refusal) and benign_heldout (benign rows never trained on, for perplexity), the last three
per eval language.

Output: datasets/<hash>/<split>/lang=<xx>/*.parquet, qa.csv, and manifest.json last (sources + sha256,
routes, translator versions, row counts, QA counts, malformed input lines, pairs left out for want of a
route)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import atomic_dir, read_manifest, write_manifest, write_parquet_atomic
from pipelines.config import StudyConfig, stable_hash
from pipelines.registries import datasets
from pipelines.registries.translators import (
    REFERENCE,
    TRANSLATORS,
    Hop,
    NoRouteError,
    Translator,
    make_translator,
    plan_route,
    route_name,
)

log = logging.getLogger(__name__)

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


@dataclass
class DatasetsOutput:
    path: Path
    manifest: dict[str, Any]
    reused: bool
    stats: dict[str, Any] = field(default_factory=dict)  # path taken, seconds, segments translated


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


def plan(cfg: StudyConfig) -> Plan:
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

    jobs += eval_jobs("eval", ed.harmful, datasets.load(ed.harmful, limit=ed.n_harmful), 0)
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
        from pipelines.registries.datasets import HPLT_OASST_LANGS

        raise NoRouteError(
            f"no over-refusal prompts for eval language(s) {missing}: no source in data.eval.safe={ed.safe} "
            f"has a translation route there with translate.prefer={cfg.translate.prefer}. Add hplt_oasst to "
            f"data.eval.safe (human translations in {', '.join(HPLT_OASST_LANGS)}), add a translator that "
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
            skipped.append({"split": "benign_heldout", "lang": lang, "source": name,
                            "reason": f"{name} has no rows after the first data.benign.n={bd.n}"})
            continue
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


def _translators_used(jobs: list[Job]) -> list[str]:
    names = set()
    for j in jobs:
        for route in (j.route, j.back):
            if isinstance(route, list):
                names.update(h.translator for h in route)
    return sorted(names)


def datasets_key(cfg: StudyConfig, jobs: list[Job]) -> dict[str, Any]:
    """Everything the translated data sets depend on; its hash names the output directory. Batch size and
    concurrency are left out: they change how fast, not what."""
    translators = _translators_used(jobs)
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
                      "options": cfg.translate.options, "qa": cfg.translate.qa.model_dump(mode="json")},
    }


# ---- the per-batch work (a Ray Data actor, or the driver when everything is cached) --------------------

class CacheMiss(Exception):
    """Raised in cache-only mode: some segment is not cached yet, so Ray Data has work to do."""


class TranslateBatch:
    """Translate a batch of rows (all columns as lists) through their routes, with the segment cache
    and QA. As a Ray Data actor it holds one instance per translator for its lifetime."""

    def __init__(self, cache_root: str, options: dict[str, dict[str, Any]], qa: dict[str, Any],
                 segment_chars: int = 0, cache_only: bool = False) -> None:
        from pipelines.translation_cache import TranslationCache

        self._cache_cls = TranslationCache
        self.cache_root = cache_root
        self.options = options
        self.qa = qa
        self.segment_chars = segment_chars
        self.cache_only = cache_only
        self._translators: dict[str, Translator] = {}
        self._caches: dict[tuple[str, str, str], Any] = {}
        self._qa_caches: dict[tuple[str, str], Any] = {}

    def _translator(self, name: str) -> Translator:
        if name not in self._translators:
            self._translators[name] = make_translator(name, **self.options.get(name, {}))
        return self._translators[name]

    def _cache(self, hop: dict[str, str]) -> Any:
        key = (hop["translator"], hop["src"], hop["tgt"])
        if key not in self._caches:
            version = self._translator(hop["translator"]).cache_version()
            self._caches[key] = self._cache_cls(self.cache_root, hop["translator"], version, hop["src"], hop["tgt"])
        return self._caches[key]

    def translate_texts(self, texts: list[str], hops: list[dict[str, str]]) -> tuple[list[str], list[int], list[int]]:
        """Texts through a chain of hops, segment by segment with the cache. Returns the translations,
        segments per text, and segments newly translated per text (a segment shared by several texts
        counts for the first)."""
        from pipelines.segment import join, split

        split_texts = [split(t, self.segment_chars) for t in texts]
        segs = [s for s, _ in split_texts]
        new = [0] * len(texts)
        for hop in hops:
            if hop["translator"] == "identity":
                continue
            first_owner: dict[str, int] = {}
            for i, ss in enumerate(segs):
                for s in ss:
                    first_owner.setdefault(s, i)
            cache = self._cache(hop)
            done = cache.get_many(first_owner)
            todo = [s for s in first_owner if s not in done]
            if todo:
                if self.cache_only:
                    raise CacheMiss(f"{len(todo)} segments not cached for {hop}")
                got = self._translator(hop["translator"]).translate(todo, hop["src"], hop["tgt"])
                if len(got) != len(todo):
                    raise RuntimeError(f"translator {hop['translator']} returned {len(got)} texts for {len(todo)}")
                cache.put_many(zip(todo, got, strict=True))
                done.update(zip(todo, got, strict=True))
                for s in todo:
                    new[first_owner[s]] += 1
            segs = [[done[s] for s in ss] for ss in segs]
        out = [join(tpl, ss) for (_, tpl), ss in zip(split_texts, segs, strict=True)]
        return out, [len(s) for s, _ in split_texts], new

    def _check(self, sources: list[str], outputs: list[str], src: str, tgt: str, back: list[str] | None,
               translated: bool) -> dict[str, Any]:
        """QA of one row, memoised in the cache like a translation: round-trip chrF costs more than reading
        an entry, and a warm rebuild should not redo it."""
        from pipelines import translation_qa as qa

        params = {"min_length_ratio": self.qa["min_length_ratio"], "lang_id_min_chars": self.qa["lang_id_min_chars"],
                  "translated": translated}
        cache = self._qa_caches.get((src, tgt))
        if cache is None:
            cache = self._qa_caches[(src, tgt)] = self._cache_cls(self.cache_root, "_qa", qa.QA_VERSION, src, tgt)
        key = json.dumps([sources, outputs, back, params], ensure_ascii=False)
        hit = cache.get(key)
        if hit is not None:
            return json.loads(hit)
        checks = qa.check(sources, outputs, src, tgt, back, **params)
        cache.put(key, json.dumps(checks))
        return checks

    def _translate_fields(self, texts: dict[str, list[str]], fields: list[str], hops: list[dict[str, str]]
                          ) -> tuple[dict[str, list[str]], list[int], list[int]]:
        """translate_texts over several parallel fields at once; counts summed per row."""
        m = len(texts[fields[0]])
        flat = [t for f in fields for t in texts[f]]
        out, nseg, new = self.translate_texts(flat, hops)
        per_field = {f: out[k * m:(k + 1) * m] for k, f in enumerate(fields)}
        seg_n = [sum(nseg[k * m + i] for k in range(len(fields))) for i in range(m)]
        seg_new = [sum(new[k * m + i] for k in range(len(fields))) for i in range(m)]
        return per_field, seg_n, seg_new

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        cols = batch.to_pydict() if hasattr(batch, "to_pydict") else {k: list(v) for k, v in batch.items()}
        self.process(cols)
        return pa.table(cols, schema=_arrow_schema(cols))

    def process(self, cols: dict[str, list[Any]]) -> None:
        """Fill the translated fields and the QA/bookkeeping columns of `cols` in place."""
        from pipelines import translation_qa as qa

        n = len(cols["idx"])
        for c in EXTRA_COLUMNS:
            cols[c] = [None] * n
        # Rows of one group share everything that decides how they are translated (a batch may mix
        # splits: benign and eval rows to the same language have the same route but different fields).
        keys = ("route", "lang", "kind", "src_lang", "fields", "hops", "back_hops")
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i in range(n):
            groups[tuple(str(cols[k][i]) for k in keys)].append(i)
        for (route, tgt, *_), idxs in groups.items():
            src = str(cols["src_lang"][idxs[0]])
            fields = str(cols["fields"][idxs[0]]).split(",")
            hops = json.loads(str(cols["hops"][idxs[0]]))
            back_hops = json.loads(str(cols["back_hops"][idxs[0]]) or "null")
            sources = {f: [str(cols[f][i] or "") for i in idxs] for f in fields}
            outputs: dict[str, list[str]] = {}
            seg_n, seg_new = [0] * len(idxs), [0] * len(idxs)
            missing: set[int] = set()
            if route == REFERENCE:
                refs = [json.loads(str(cols["refs"][i])) for i in idxs]
                outputs = {f: [r.get(tgt, "") for r in refs] for f in fields}
                missing = {k for k, r in enumerate(refs) if tgt not in r}
            elif route == NATIVE or all(h["translator"] == "identity" for h in hops):
                outputs = dict(sources)
            else:
                # All fields of the group in one pass: one translator call per hop per batch.
                outputs, a, b = self._translate_fields(sources, fields, hops)
                seg_n = [x + y for x, y in zip(seg_n, a, strict=True)]
                seg_new = [x + y for x, y in zip(seg_new, b, strict=True)]
            backs: dict[str, list[str]] | None = None
            if back_hops and route != NATIVE:
                backs, _, b = self._translate_fields(outputs, fields, back_hops)
                seg_new = [x + y for x, y in zip(seg_new, b, strict=True)]
            for k, i in enumerate(idxs):
                for f in fields:
                    cols[f][i] = outputs[f][k]
                if route == NATIVE or src == tgt:
                    checks = qa.not_checked()
                else:
                    checks = self._check([sources[f][k] for f in fields], [outputs[f][k] for f in fields], src,
                                         tgt, None if backs is None else [backs[f][k] for f in fields],
                                         route != REFERENCE)
                    if k in missing:
                        checks["qa_flags"] = ",".join(sorted({*filter(None, checks["qa_flags"].split(",")),
                                                              "missing_ref"}))
                for c, v in checks.items():
                    cols[c][i] = v
                cols["tr_segments"][i] = seg_n[k]
                cols["tr_new"][i] = seg_new[k]


def _arrow_schema(cols: dict[str, list[Any]]) -> Any:
    import pyarrow as pa

    types = {"idx": pa.int64(), "qa_lang_score": pa.float64(), "qa_chrf": pa.float64(), "tr_segments": pa.int64(),
             "tr_new": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in cols])


def _job_rows(job: Job, fields_by_kind: dict[str, list[str]] = FIELDS) -> list[dict[str, Any]]:
    hops = [] if isinstance(job.route, str) else [h.__dict__ for h in job.route]
    back = None if job.back is None else [h.__dict__ for h in job.back]
    rows = []
    for k, r in enumerate(job.rows):
        row = {c: "" for c in TEXT_COLUMNS}
        row.update({key: str(v) for key, v in r.items() if key not in ("refs",)})
        row.update(kind=job.kind, idx=job.idx_offset + k, src_lang=r["lang"], lang=job.lang,
                   route=route_name(job.route), hops=json.dumps(hops), back_hops=json.dumps(back),
                   fields=",".join(fields_by_kind[job.kind]), refs=json.dumps(r.get("refs", {}), ensure_ascii=False))
        if "prompt" in fields_by_kind[job.kind]:
            row["prompt_en"] = r["prompt"]
        rows.append({c: row.get(c, "") for c in _ALL_COLUMNS} | {"idx": row["idx"]})
    return rows


_ALL_COLUMNS = ["id", "source", "category", "kind", "lang", "src_lang", "idx", "route", "hops", "back_hops",
                "fields", "refs", *TEXT_COLUMNS]


def actor_resources(cfg: StudyConfig, translators: list[str], n_batches: int | None = None) -> dict[str, Any]:
    """Concurrency and per-actor resources for the translator actors: the configured concurrency ("auto":
    one actor per CPU in the cluster), capped by what the cluster has and by the number of batches (an
    actor with no batch would only cost its start-up); a GPU per actor when a translator on the routes
    wants one and the cluster has GPUs (translate.options.<name>.num_gpus overrides)."""
    import ray

    res = ray.cluster_resources() if ray.is_initialized() else {}
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    num_gpus = 0.0
    for name in translators:
        cls = TRANSLATORS.get(name)
        want = translator_options(cfg, name).get("num_gpus")
        if want is None and cls.prefers_gpu and gpus > 0:
            want = 1
        num_gpus = max(num_gpus, float(want or 0))
    # Half a logical CPU: a Ray Train worker and the translate actors must fit on small machines
    # (FIELD-NOTES: deadlock on 2 CPUs otherwise).
    num_cpus = 0.5
    cap = max(1, int(cpus / num_cpus))
    if num_gpus > 0:
        cap = min(cap, max(1, int(gpus / num_gpus)))
    if n_batches is not None:
        cap = min(cap, max(1, n_batches))
    want = cfg.translate.concurrency
    if want == "auto":
        want = max(1, int(cpus))
    return {"concurrency": max(1, min(want, cap)), "num_cpus": num_cpus, "num_gpus": num_gpus}


def build_datasets(cfg: StudyConfig, workdir: Path, *, force_ray: bool = False) -> DatasetsOutput:
    """Build (or reuse) the translated data sets for `cfg` under <workdir>/datasets/<hash>."""
    from pipelines.translation_cache import cache_root

    t0 = time.time()
    jobs = plan(cfg)
    key = datasets_key(cfg, jobs)
    digest = stable_hash(key)
    out = workdir / "datasets" / digest
    manifest = read_manifest(out)
    if manifest is not None:
        return DatasetsOutput(out, manifest, reused=True, stats={"path": "reused"})

    malformed = {j.source: getattr(j.rows, "malformed", []) for j in jobs if getattr(j.rows, "malformed", [])}
    for source, bad in malformed.items():
        # Line numbers only: the content may be an unsafe prompt.
        log.warning("%s: %d malformed input lines skipped: %s", source, len(bad),
                    [(b["file"], b["line"]) for b in bad][:20])
    for miss in jobs.skipped:
        log.warning("%s/%s from %s left out: no route", miss["split"], miss["lang"], miss["source"])
    root = str(cache_root(workdir))
    qa_cfg = cfg.translate.qa.model_dump(mode="json")
    rows = [row for job in jobs for row in _job_rows(job)]
    kinds = [k for k in FIELDS if any(j.kind == k for j in jobs)]
    stats: dict[str, Any] = {}
    with atomic_dir(out) as tmp:
        table = None if force_ray else _try_cached(rows, root, cfg, qa_cfg)
        stats["path"] = "cache" if table is not None else "ray"
        if table is None:
            table = _run_ray(rows, jobs, root, cfg, qa_cfg)
        for kind in kinds:
            for lang, part in table.filter(pl.col("kind") == kind).group_by("lang", maintain_order=True):
                _write_split(part.select([*COLUMNS[kind], *EXTRA_COLUMNS]), tmp / kind / f"lang={lang[0]}")
        counts, qa_counts, seg, qa_rows = _summaries(tmp, jobs, qa_cfg)
        pl.DataFrame(qa_rows).write_csv(tmp / "qa.csv")
        stats.update(seconds=round(time.time() - t0, 2), **seg)
        manifest = write_manifest(
            tmp, hash=digest, **key, counts=counts, qa=qa_counts, qa_policy=_policy(qa_cfg),
            malformed={s: {"count": len(b), "lines": b} for s, b in malformed.items()},
            unrouted=jobs.skipped,
            translation={"cache": root, **stats})
    log.info("translated data sets written to %s (%s)", out, stats)
    return DatasetsOutput(out, manifest, reused=False, stats=stats)


def _policy(qa_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: qa_cfg[k] for k in ("drop_flags", "require_lang_id", "min_chrf")}


def _try_cached(rows: list[dict[str, Any]], root: str, cfg: StudyConfig, qa_cfg: dict[str, Any]) -> pl.DataFrame | None:
    """Every row done in the driver from the cache alone, or None when anything needs translating."""
    cols: dict[str, list[Any]] = {c: [r[c] for r in rows] for c in _ALL_COLUMNS}
    worker = TranslateBatch(root, cfg.translate.options, qa_cfg, cfg.translate.segment_chars, cache_only=True)
    try:
        worker.process(cols)
    except CacheMiss:
        return None
    return pl.DataFrame(cols, schema_overrides={"idx": pl.Int64, "qa_chrf": pl.Float64,
                                                "qa_lang_score": pl.Float64, "tr_segments": pl.Int64,
                                                "tr_new": pl.Int64}, strict=False)


def _run_ray(rows: list[dict[str, Any]], jobs: list[Job], root: str, cfg: StudyConfig,
             qa_cfg: dict[str, Any]) -> pl.DataFrame:
    """The rows through translator actors with Ray Data; the (small) result comes back to the driver,
    which writes one Parquet shard per (split, language) atomically inside the stage's temporary dir."""
    import pyarrow as pa
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # ids stay in source order within each language
    bs = cfg.translate.batch_size
    n_batches = max(1, math.ceil(len(rows) / bs))
    res = actor_resources(cfg, _translators_used(jobs), n_batches)
    ds = ray.data.from_items(rows, override_num_blocks=n_batches)
    # A fixed pool of actors (`concurrency=` is deprecated since Ray 2.51 in favour of compute=).
    ds = ds.map_batches(TranslateBatch, batch_size=bs, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=res["concurrency"]),
                        num_cpus=res["num_cpus"], num_gpus=res["num_gpus"] or None,
                        fn_constructor_kwargs={"cache_root": root, "options": cfg.translate.options,
                                               "qa": qa_cfg, "segment_chars": cfg.translate.segment_chars})
    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    return pl.from_arrow(table)


def _write_split(df: pl.DataFrame, directory: Path) -> None:
    write_parquet_atomic(df.drop("lang").sort("idx"), directory / "part-00000.parquet")


def _summaries(tmp: Path, jobs: list[Job], qa_cfg: dict[str, Any]) -> tuple[dict, dict, dict, list]:
    from pipelines.translation_qa import qa_table

    counts: dict[str, dict[str, int]] = defaultdict(dict)
    qa_counts: dict[str, dict[str, Any]] = defaultdict(dict)
    qa_rows: list[dict[str, Any]] = []
    seg = {"segments": 0, "segments_translated": 0}
    policy = _policy(qa_cfg)
    for kind, lang in dict.fromkeys((j.kind, j.lang) for j in jobs):
        df = _read_raw(tmp, kind, lang)
        counts[kind][lang] = df.height
        table = qa_table(df, policy)
        qa_counts[kind][lang] = table
        qa_rows.append({"split": kind, "lang": lang, **{k: v for k, v in table.items()}})
        seg["segments"] += int(df["tr_segments"].sum())
        seg["segments_translated"] += int(df["tr_new"].sum())
    return dict(counts), dict(qa_counts), seg, qa_rows


def _read_raw(ds_path: Path, kind: str, lang: str) -> pl.DataFrame:
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
    df = _read_raw(ds_path, kind, lang)
    if qa_filter is False:
        return df
    if isinstance(qa_filter, dict):
        policy = qa_filter
    else:
        manifest = read_manifest(ds_path) or {}
        policy = manifest.get("qa_policy") or {}
    if not policy:
        return df
    from pipelines.translation_qa import policy_mask

    return df.filter(policy_mask(df, policy))
