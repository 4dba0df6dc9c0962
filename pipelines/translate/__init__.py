"""Translate: the benign fine-tuning set and the eval suite in every configured language.

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

Modules: plan (routes), batch (the per-batch work), splits (on disk), segment, cache, qa, translators/.
Output: datasets/<hash>/<split>/lang=<xx>/*.parquet, qa.csv, and manifest.json last (sources + sha256,
routes, translator versions, row counts, QA counts, malformed input lines, pairs left out for want of a
route)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import atomic_dir, read_manifest, write_manifest
from pipelines.config import StudyConfig
from pipelines.hashing import stable_hash
from pipelines.layout import Workdir
from pipelines.translate.batch import ALL_COLUMNS, CacheMiss, TranslateBatch, job_rows
from pipelines.translate.plan import Job, Plan, datasets_key, plan_jobs, translator_options, translators_used
from pipelines.translate.splits import (
    COLUMNS,
    EXTRA_COLUMNS,
    FIELDS,
    qa_policy,
    read_split,
    summaries,
    write_split,
)
from pipelines.translate.translators import TRANSLATORS

__all__ = ["DatasetsOutput", "Plan", "build_datasets", "datasets_key", "plan_jobs", "read_split"]

log = logging.getLogger(__name__)


@dataclass
class DatasetsOutput:
    path: Path
    manifest: dict[str, Any]
    reused: bool
    stats: dict[str, Any] = field(default_factory=dict)  # path taken, seconds, segments translated


def actor_resources(cfg: StudyConfig, translators: list[str], n_batches: int | None = None) -> dict[str, Any]:
    """Concurrency and per-actor resources for the translator actors: the configured concurrency ("auto":
    one actor per CPU in the cluster), capped by what the cluster has and by the number of batches (an
    actor with no batch would only cost its start-up); a GPU per actor when a translator on the routes
    wants one and the cluster has GPUs or will have them when asked — an autoscaler's GPU group at 0
    nodes, as KubeRay starts the paper's (translate.options.<name>.num_gpus overrides)."""
    import ray

    res = ray.cluster_resources() if ray.is_initialized() else {}
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    if res and not gpus:
        # Read with the Ray cluster, like ray above: pipelines.sweep's package imports the evaluation stage,
        # which reads this one's splits, so a module-level import would be a cycle.
        from pipelines.sweep.resources import gpus_to_come

        # Else NLLB would run on CPU for hours (issue #29) while the GPUs the sweep is about to ask for idle.
        gpus = gpus_to_come(cfg)
    num_gpus = 0.0
    for name in translators:
        cls = TRANSLATORS.get(name)
        want = translator_options(cfg, name).get("num_gpus")
        if want is None and cls.prefers_gpu and gpus > 0:
            want = 1
        num_gpus = max(num_gpus, float(want or 0))
    # Half a logical CPU: a Ray Train worker and the translate actors must fit on small machines
    # (with a whole CPU each, a 2-CPU machine deadlocked: the Train worker and the actors waited on each other).
    num_cpus = 0.5
    cap = max(1, int(cpus / num_cpus))
    if num_gpus > 0 and math.isfinite(gpus):
        cap = min(cap, max(1, int(gpus / num_gpus)))
    if n_batches is not None:
        cap = min(cap, max(1, n_batches))
    want = cfg.translate.concurrency
    if want == "auto":
        want = max(1, int(cpus))
    return {"concurrency": max(1, min(want, cap)), "num_cpus": num_cpus, "num_gpus": num_gpus}


def build_datasets(cfg: StudyConfig, workdir: Workdir | Path, *, jobs: Plan | None = None,
                   force_ray: bool = False) -> DatasetsOutput:
    """Build (or reuse) the translated data sets for `cfg` under <workdir>/datasets/<hash>; `jobs`: the
    study's translation plan when the caller has made it (planning loads every data set)."""

    t0 = time.time()
    jobs = plan_jobs(cfg) if jobs is None else jobs
    key = datasets_key(cfg, jobs)
    digest = stable_hash(key)
    wd = Workdir.of(workdir)
    out = wd.datasets(digest)
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
    root = str(wd.translation_cache())
    qa_cfg = cfg.translate.qa.model_dump(mode="json")
    rows = [row for job in jobs for row in job_rows(job)]
    kinds = [k for k in FIELDS if any(j.kind == k for j in jobs)]
    stats: dict[str, Any] = {}
    with atomic_dir(out) as tmp:
        table = None if force_ray else _try_cached(rows, root, cfg, qa_cfg)
        stats["path"] = "cache" if table is not None else "ray"
        if table is None:
            table = _run_ray(rows, jobs, root, cfg, qa_cfg)
        for kind in kinds:
            for lang, part in table.filter(pl.col("kind") == kind).group_by("lang", maintain_order=True):
                write_split(part.select([*COLUMNS[kind], *EXTRA_COLUMNS]), tmp / kind / f"lang={lang[0]}")
        counts, qa_counts, seg, qa_rows = summaries(tmp, jobs, qa_cfg)
        pl.DataFrame(qa_rows).write_csv(tmp / "qa.csv")
        stats.update(seconds=round(time.time() - t0, 2), **seg)
        manifest = write_manifest(
            tmp, hash=digest, **key, counts=counts, qa=qa_counts, qa_policy=qa_policy(qa_cfg),
            malformed={s: {"count": len(b), "lines": b} for s, b in malformed.items()},
            unrouted=jobs.skipped,
            translation={"cache": root, **stats})
    log.info("translated data sets written to %s (%s)", out, stats)
    return DatasetsOutput(out, manifest, reused=False, stats=stats)


def _try_cached(rows: list[dict[str, Any]], root: str, cfg: StudyConfig, qa_cfg: dict[str, Any]) -> pl.DataFrame | None:
    """Every row done in the driver from the cache alone, or None when anything needs translating."""
    cols: dict[str, list[Any]] = {c: [r[c] for r in rows] for c in ALL_COLUMNS}
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
    res = actor_resources(cfg, translators_used(jobs), n_batches)
    ds = ray.data.from_items(rows, override_num_blocks=n_batches)
    # A fixed pool of actors (`concurrency=` is deprecated since Ray 2.51 in favour of compute=).
    ds = ds.map_batches(TranslateBatch, batch_size=bs, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=res["concurrency"]),
                        num_cpus=res["num_cpus"], num_gpus=res["num_gpus"] or None,
                        fn_constructor_kwargs={"cache_root": root, "options": cfg.translate.options,
                                               "qa": qa_cfg, "segment_chars": cfg.translate.segment_chars})
    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    return pl.from_arrow(table)


