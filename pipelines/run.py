"""The whole study in one call: translate → sweep (fine-tune, generate, judge, measure per cell) →
report. Every stage is named by the hash of its inputs, so a rerun with the same config does no work
twice, and when everything is done Ray is not even started."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.storage import read_manifest, workdir_path, write_manifest
from pipelines.cell_run import Tracking, cell_dir
from pipelines.cells import cell_hash, study_cells
from pipelines.config import StudyConfig, stable_hash
from pipelines.translate import datasets_key, plan

log = logging.getLogger(__name__)


@dataclass
class StudyResult:
    workdir: Path
    study_hash: str
    datasets_path: Path
    report_path: Path
    parent_run_id: str | None
    results: list[dict[str, Any]]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> {reused, seconds}


def study_hashes(cfg: StudyConfig) -> tuple[str, str]:
    """(datasets hash, study hash), computed without Ray or any model."""
    ds_hash = stable_hash(datasets_key(cfg, plan(cfg)))
    cells = [cell_hash(cfg, c, ds_hash) for c in study_cells(cfg)]
    return ds_hash, stable_hash({"datasets": ds_hash, "cells": cells, "eval_langs": cfg.eval_langs})


def run_study(cfg: StudyConfig, resume: bool = True) -> StudyResult:
    from pipelines.user_evalsets import check_user_files

    check_user_files(cfg.evaluate)  # a bad user file fails now, not after the fine-tuning
    workdir = workdir_path(cfg.resolved_workdir())
    ds_hash, study_hash = study_hashes(cfg)
    from cluster.tracking import tracking_uri

    # One sweep record per tracking store: pointed at a new MLflow server, a finished study is logged
    # there again (from its cached cells, which costs seconds) rather than silently skipped.
    sweep_dir = workdir / "sweeps" / study_hash / stable_hash(tracking_uri(workdir, cfg.mlflow.tracking_uri), 8)
    report_dir = workdir / "reports" / study_hash
    done = read_manifest(sweep_dir)
    if done is not None and read_manifest(report_dir) is not None:
        stages = {s: {"reused": True, "seconds": 0.0} for s in ("translate", "sweep", "report")}
        results = [read_manifest(cell_dir(workdir, cfg, c, ds_hash)) or {} for c in study_cells(cfg)]
        return StudyResult(workdir, study_hash, workdir / "datasets" / ds_hash, report_dir,
                           done.get("parent_run_id"), results, stages)

    import mlflow

    from cluster.connect import connect
    from cluster.tracking import setup_mlflow
    from pipelines.report import write_report
    from pipelines.sweep import run_sweep
    from pipelines.translate import build_datasets

    stages: dict[str, dict[str, Any]] = {}
    connect(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.include_dashboard)
    if any(not c.is_base and read_manifest(cell_dir(workdir, cfg, c, ds_hash)) is None for c in study_cells(cfg)):
        from pipelines.sweep import check_fits

        check_fits(cfg)  # a cell the cluster can never hold fails now, not after the translation

    t0 = time.time()
    ds = build_datasets(cfg, workdir)
    stages["translate"] = {"reused": ds.reused, "seconds": round(time.time() - t0, 1)}

    uri, exp_id = setup_mlflow(workdir, cfg.mlflow.experiment, cfg.mlflow.tracking_uri)
    from cluster.tracking import close_stale_runs

    if closed := close_stale_runs(uri, exp_id, study_hash):
        log.warning("marked %d MLflow run(s) of an interrupted sweep of this study as KILLED", closed)
    with mlflow.start_run(run_name=f"{cfg.name}-{study_hash}", experiment_id=exp_id,
                          tags={"safedrift.study_hash": study_hash, "safedrift.preset": cfg.name}) as parent:
        mlflow.log_dict(cfg.model_dump(mode="json"), "config.json")
        mlflow.log_dict(ds.manifest, "datasets_manifest.json")
        t0 = time.time()
        results = run_sweep(cfg, workdir, ds.path, ds_hash, Tracking(uri, exp_id, parent.info.run_id),
                            sweep_name=f"sweep-{study_hash}", resume=resume)
        stages["sweep"] = {"reused": all(r["reused"] for r in results), "seconds": round(time.time() - t0, 1)}

        t0 = time.time()
        # A cell's manifest names the MLflow run that first evaluated it, possibly in another store: the
        # runs of *this* sweep are the parent's children, found by their cell tag.
        children = mlflow.MlflowClient(uri).search_runs(
            [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        run_ids = {r.data.tags.get("safedrift.cell"): r.info.run_id for r in children}
        results = [r | {"mlflow_run_id": run_ids.get(r["cell_id"])} for r in results]
        from pipelines.measure import write_sweep_tidy  # every metric, one row per cell × language × metric
        from pipelines.report_provenance import study_context

        # The sweep-level table sits beside the sweep's manifest (`safedrift report --sweep-dir` reads it);
        # the report is drawn from it alone plus the study's provenance.
        tidy = write_sweep_tidy(results, workdir, sweep_dir, uri)
        write_report(tidy, study_context(cfg, study_hash, ds_hash, ds.manifest, parent.info.run_id, uri), report_dir)
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
        stages["report"] = {"reused": False, "seconds": round(time.time() - t0, 1)}
        write_manifest(sweep_dir, parent_run_id=parent.info.run_id, tracking_uri=uri, cells=[r["cell_id"] for r in results],
                       datasets=ds_hash, stages=stages)
    return StudyResult(workdir, study_hash, ds.path, report_dir, parent.info.run_id, results, stages)
