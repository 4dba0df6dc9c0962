"""Stage 1, translate: the benign fine-tuning set and the eval prompts in every configured language.

Ray Data carries the rows to translator actors (one translator load per actor) and writes Parquet shards
partitioned by language: datasets/<hash>/{benign,eval}/lang=<xx>/*.parquet, then manifest.json last."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import atomic_dir, read_manifest, write_manifest
from pipelines.config import StudyConfig, stable_hash
from pipelines.registries import datasets
from pipelines.registries.translators import REFERENCE, TRANSLATORS, Hop, plan_route, route_name

log = logging.getLogger(__name__)

FIELDS = {"benign": ["instruction", "input", "output"], "eval": ["prompt"]}
NATIVE = "native"


@dataclass
class Job:
    kind: str  # benign | eval
    lang: str
    rows: list[dict[str, Any]]
    route: list[Hop] | str  # hops, "reference" or "native"


@dataclass
class DatasetsOutput:
    path: Path
    manifest: dict[str, Any]
    reused: bool


def plan(cfg: StudyConfig) -> list[Job]:
    """Every (kind, language) job with its route, planned before any work so that a language without
    a route fails at once, naming what is available."""
    bd, ed = cfg.data.benign, cfg.data.eval
    jobs: list[Job] = []
    english = datasets.load(bd.source, limit=bd.n)
    for lang in cfg.ft_langs:
        if lang in bd.native:
            jobs.append(Job("benign", lang, datasets.load(bd.native[lang], limit=bd.n), NATIVE))
        else:
            jobs.append(Job("benign", lang, english, plan_route(english[0]["lang"], lang, cfg.translate.prefer)))
    prompts = datasets.load(ed.harmful, limit=ed.n_harmful)
    for lang in cfg.eval_langs:
        def has_ref(tgt: str) -> bool:
            return all(tgt in r["refs"] for r in prompts)

        jobs.append(Job("eval", lang, prompts, plan_route("en", lang, cfg.translate.prefer, has_ref)))
    return jobs


def datasets_key(cfg: StudyConfig, jobs: list[Job]) -> dict[str, Any]:
    translators = sorted({h.translator for j in jobs if isinstance(j.route, list) for h in j.route})
    sources = sorted({cfg.data.benign.source, cfg.data.eval.harmful, *cfg.data.benign.native.values()})
    return {
        "data": cfg.data.model_dump(mode="json"),
        "ft_langs": cfg.ft_langs,
        "eval_langs": cfg.eval_langs,
        "routes": {f"{j.kind}/{j.lang}": route_name(j.route) for j in jobs},
        "sources": {s: datasets.sha256_of(s) for s in sources},
        "translator_versions": {t: TRANSLATORS.get(t).version() for t in translators},
    }


class TranslateBatch:
    """A Ray Data actor: one translator instance per name for the actor's lifetime."""

    def __init__(self) -> None:
        self._translators: dict[str, Any] = {}

    def _translator(self, name: str) -> Any:
        if name not in self._translators:
            self._translators[name] = TRANSLATORS.get(name)()
        return self._translators[name]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["idx"])
        groups: dict[str, list[int]] = defaultdict(list)
        for i in range(n):
            groups[str(batch["route"][i])].append(i)
        for route_str, idxs in groups.items():
            hops = json.loads(str(batch["hops"][idxs[0]]))
            for field in str(batch["fields"][idxs[0]]).split(","):
                texts = [str(batch[field][i]) for i in idxs]
                if route_str == REFERENCE:
                    tgt = str(batch["lang"][idxs[0]])
                    texts = [json.loads(str(batch["refs"][i]))[tgt] for i in idxs]
                else:
                    for hop in hops:
                        texts = self._translate(hop, texts)
                col = list(batch[field])
                for i, t in zip(idxs, texts, strict=True):
                    col[i] = t
                batch[field] = col
        return batch

    def _translate(self, hop: dict[str, str], texts: list[str]) -> list[str]:
        # Empty fields (Alpaca's blank "input") are not sent to the translator.
        live = [i for i, t in enumerate(texts) if t.strip()]
        out = list(texts)
        done = self._translator(hop["translator"]).translate([texts[i] for i in live], hop["src"], hop["tgt"])
        for i, t in zip(live, done, strict=True):
            out[i] = t
        return out


def _job_rows(job: Job) -> list[dict[str, Any]]:
    hops = [] if isinstance(job.route, str) else [h.__dict__ for h in job.route]
    rows = []
    for idx, r in enumerate(job.rows):
        row = {k: v for k, v in r.items() if k != "refs"}
        row.update(idx=idx, src_lang=r["lang"], lang=job.lang, route=route_name(job.route),
                   hops=json.dumps(hops), fields=",".join(FIELDS[job.kind]),
                   refs=json.dumps(r.get("refs", {}), ensure_ascii=False))
        if job.kind == "eval":
            row["prompt_en"] = r["prompt"]
        rows.append(row)
    return rows


def build_datasets(cfg: StudyConfig, workdir: Path) -> DatasetsOutput:
    import ray

    jobs = plan(cfg)
    key = datasets_key(cfg, jobs)
    digest = stable_hash(key)
    out = workdir / "datasets" / digest
    manifest = read_manifest(out)
    if manifest is not None:
        return DatasetsOutput(out, manifest, reused=True)

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # ids stay in source order within each language
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    with atomic_dir(out) as tmp:
        for kind in FIELDS:
            rows = [row for job in jobs if job.kind == kind for row in _job_rows(job)]
            ds = ray.data.from_items(rows)
            ds = ds.map_batches(TranslateBatch, batch_size=cfg.translate.batch_size,
                                concurrency=cfg.translate.concurrency, num_cpus=0.5, batch_format="numpy")
            ds = ds.drop_columns(["hops", "fields"])
            ds.write_parquet(str(tmp / kind), partition_cols=["lang"])
            for job in (j for j in jobs if j.kind == kind):
                counts[kind][job.lang] = len(job.rows)
        manifest = write_manifest(tmp, hash=digest, **key, counts=dict(counts))
    log.info("translated data sets written to %s", out)
    return DatasetsOutput(out, manifest, reused=False)


def read_split(ds_path: Path, kind: str, lang: str) -> pl.DataFrame:
    """One language of one split, in source order."""
    files = sorted((ds_path / kind / f"lang={lang}").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {kind} data for language '{lang}' under {ds_path}")
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed").sort("idx").with_columns(
        pl.lit(lang).alias("lang"))
