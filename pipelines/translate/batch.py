"""The per-batch work: a Ray Data actor (or the driver, when every segment is cached) translates a batch
of rows through their routes, segment by segment with the translation cache, and runs the QA checks."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from pipelines.translate import qa
from pipelines.translate.cache import TranslationCache
from pipelines.translate.plan import NATIVE, Job
from pipelines.translate.segment import join, split
from pipelines.translate.splits import EXTRA_COLUMNS, FIELDS, TEXT_COLUMNS
from pipelines.translate.translators import REFERENCE, Translator, make_translator, route_name


class CacheMiss(Exception):
    """Raised in cache-only mode: some segment is not cached yet, so Ray Data has work to do."""


class TranslateBatch:
    """Translate a batch of rows (all columns as lists) through their routes, with the segment cache
    and QA. As a Ray Data actor it holds one instance per translator for its lifetime."""

    def __init__(self, cache_root: str, options: dict[str, dict[str, Any]], qa: dict[str, Any],
                 segment_chars: int = 0, cache_only: bool = False) -> None:

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
            self._caches[key] = TranslationCache(self.cache_root, hop["translator"], version, hop["src"], hop["tgt"])
        return self._caches[key]

    def translate_texts(self, texts: list[str], hops: list[dict[str, str]]) -> tuple[list[str], list[int], list[int]]:
        """Texts through a chain of hops, segment by segment with the cache. Returns the translations,
        segments per text, and segments newly translated per text (a segment shared by several texts
        counts for the first)."""

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

        params = {"min_length_ratio": self.qa["min_length_ratio"], "lang_id_min_chars": self.qa["lang_id_min_chars"],
                  "translated": translated}
        cache = self._qa_caches.get((src, tgt))
        if cache is None:
            cache = self._qa_caches[(src, tgt)] = TranslationCache(self.cache_root, "_qa", qa.QA_VERSION, src, tgt)
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


def job_rows(job: Job, fields_by_kind: dict[str, list[str]] = FIELDS) -> list[dict[str, Any]]:
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
        rows.append({c: row.get(c, "") for c in ALL_COLUMNS} | {"idx": row["idx"]})
    return rows


ALL_COLUMNS = ["id", "source", "category", "kind", "lang", "src_lang", "idx", "route", "hops", "back_hops",
                "fields", "refs", *TEXT_COLUMNS]


