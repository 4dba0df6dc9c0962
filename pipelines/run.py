"""The whole study in one call, as a sequence of stages: translate → sweep (fine-tune and evaluate every
cell) → report. Each stage returns (output, reused, seconds). Every stage is named by the hash of its
inputs, so a rerun with the same config does no work twice, and when everything is done Ray is not even
started."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cluster.connect import connect
from cluster.storage import read_manifest, workdir_lock, write_manifest
from cluster.tracking import Tracking, close_stale_runs, setup_mlflow, tracking_uri
from pipelines.cells import Study
from pipelines.config import StudyConfig
from pipelines.evaluate.user_sets import check_user_files
from pipelines.hashing import stable_hash
from pipelines.layout import Workdir
from pipelines.report import write_report
from pipelines.report.provenance import study_context
from pipelines.secrets import public_view, redact_uri
from pipelines.sweep import check_fits, run_sweep
from pipelines.sweep.rejudge import check_judgments
from pipelines.sweep.tidy import write_sweep_tidy
from pipelines.translate import DatasetsOutput, Plan, build_datasets, plan_jobs

log = logging.getLogger(__name__)

STAGES = ("translate", "sweep", "report")
Event = Callable[[str, dict[str, Any]], None]  # (kind, info): what a console hears of a running study


@dataclass
class Stage:
    output: Any
    reused: bool
    seconds: float


@dataclass
class StudyResult:
    workdir: Path
    study_hash: str
    datasets_path: Path
    report_path: Path
    parent_run_id: str | None
    results: list[dict[str, Any]]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> {reused, seconds}


@dataclass
class StudyRun:
    """The driver's view of one study: the Study (config, workdir, hashes), the translation plan its
    hashes were computed from (handed on to the translate stage: planning loads every data set), the
    tracking store's URI that names its sweep folder, and who hears of its progress."""

    study: Study
    jobs: Plan | None
    uri: str
    on_event: Event

    @property
    def sweep_dir(self) -> Path:
        return self.study.wd.sweep(self.study.study_hash, self.uri)

    @property
    def report_dir(self) -> Path:
        return self.study.wd.report(self.study.study_hash)


def timed(fn: Callable[..., tuple[Any, bool]], run: StudyRun, *args: Any) -> Stage:
    """Runs one stage, `fn(run, *args) -> (output, reused)`, and times it."""
    run.on_event("stage", {"name": fn.__name__.removesuffix("_stage")})
    t0 = time.time()
    output, reused = fn(run, *args)
    return Stage(output, reused, round(time.time() - t0, 1))


def run_study(cfg: StudyConfig, resume: bool = True,
              until: Literal["translate", "sweep", "report"] = "report", on_event: Event | None = None,
              rejudge: bool = True) -> StudyResult:
    """Runs the stages up to and including `until` (`safedrift sweep` stops after the sweep). Holds the
    workdir's lock throughout: a second driver on the same workdir fails at once, naming this one, instead
    of overwriting its outputs and marking its MLflow runs KILLED. `on_event(kind, info)` hears of the study
    ("study": its cell directories and progress folder) and of each stage as it starts ("stage").
    `rejudge`: finished cells judged by an earlier version of the judge are judged again from their stored
    answers (sweep/rejudge.py); off, they are kept, with a warning."""
    check_user_files(cfg.evaluate)  # a bad user file fails now, not after the fine-tuning
    wd = Workdir.open(cfg.resolved_workdir())
    jobs = plan_jobs(cfg)  # once per run: the study's hashes and the translate stage both read it
    study = Study.of(cfg, wd, jobs)
    run = StudyRun(study, jobs, tracking_uri(wd.mlflow_db(), cfg.mlflow.tracking_uri),
                   on_event or (lambda kind, info: None))
    run.on_event("study", {"cell_dirs": [study.cell_dir(c) for c in study.cells()], "progress_dir": wd.progress()})
    with workdir_lock(wd.root):
        # Cells handed back to be judged again are named there, not again as "missing or damaged".
        stale = check_judgments(study, rejudge) if until != "translate" else []
        if until == "report" and not (rejudge and stale) and (done := finished(run)) is not None:
            return done
        return _run(run, resume, until)


def _run(run: StudyRun, resume: bool, until: Literal["translate", "sweep", "report"]) -> StudyResult:
    study = run.study
    cfg, wd, study_hash = study.cfg, study.wd, study.study_hash

    connect(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.include_dashboard)
    pending = [c for c in study.cells() if read_manifest(study.cell_dir(c)) is None]
    if pending:
        # A cell the cluster can never hold (its training workers, its evaluation worker) fails now, not
        # after the translation.
        check_fits(cfg, train=any(not c.is_base for c in pending))
    stages: dict[str, Stage] = {"translate": timed(translate_stage, run)}
    ds: DatasetsOutput = stages["translate"].output
    if until == "translate":
        return _result(run, ds, None, [], stages)

    import mlflow

    uri, exp_id = setup_mlflow(wd.mlflow_db(), wd.mlflow_artifacts(), cfg.mlflow.experiment, cfg.mlflow.tracking_uri)
    workdir_id = workdir_tag(wd.root)
    if closed := close_stale_runs(uri, exp_id, study_hash, workdir_id):
        log.warning("marked %d MLflow run(s) of an interrupted sweep of this study as KILLED", closed)
    with mlflow.start_run(run_name=f"{cfg.name}-{study_hash}", experiment_id=exp_id,
                          tags={"safedrift.study_hash": study_hash, "safedrift.preset": cfg.name,
                                "safedrift.workdir": workdir_id}) as parent:
        # Secrets masked and URIs without credentials: MLflow's artifacts are read by everyone on the server.
        mlflow.log_dict(cfg.public(), "config.json")
        mlflow.log_dict(public_view(ds.manifest), "datasets_manifest.json")
        running = study.running(ds.path, Tracking(uri, exp_id, parent.info.run_id))
        stages["sweep"] = timed(sweep_stage, run, running, resume)
        results, tidy = stages["sweep"].output
        if until == "report":
            stages["report"] = timed(report_stage, run, ds, tidy, parent.info.run_id)
        # The URI without user:password@ (`safedrift report --sweep-dir` logs with MLflow's own
        # MLFLOW_TRACKING_USERNAME/PASSWORD when the server wants them).
        write_manifest(run.sweep_dir, parent_run_id=parent.info.run_id, tracking_uri=redact_uri(uri),
                       cells=[r["cell_id"] for r in results], datasets=study.ds_hash, stages=_summary(stages))
    return _result(run, ds, parent.info.run_id, results, stages)


def workdir_tag(root: Path) -> str:
    """Which workdir a parent run belongs to, as an MLflow tag: a hash of its host and path (the path
    itself may name a user), so only that workdir's driver closes its stale runs."""
    return stable_hash({"host": socket.gethostname(), "workdir": str(Path(root).resolve())}, 12)


def finished(run: StudyRun) -> StudyResult | None:
    """The result of a study whose every output is complete (datasets, each cell, sweep and report), read
    from their manifests; None when any is missing or damaged (`read_manifest` reads a damaged output as
    not done), so the stages that follow redo just that output and reuse the rest."""
    study = run.study
    done = read_manifest(run.sweep_dir)
    if done is None or read_manifest(run.report_dir) is None:
        return None
    results, redo = [], []
    for cell in study.cells():
        manifest = read_manifest(study.cell_dir(cell))
        if manifest is None:
            redo.append(f"cell {cell.id}")
        else:
            results.append(manifest)
    if read_manifest(study.wd.datasets(study.ds_hash)) is None:
        redo.append("the translated datasets")
    if redo:
        # Returning the half-read results here made every later step fail (KeyError on a metric).
        log.warning("study %s finished earlier, but the output of %s is missing or damaged: redoing %s, "
                    "reusing everything else", study.study_hash, ", ".join(redo), "it" if len(redo) == 1 else "them")
        return None
    stages = {s: {"reused": True, "seconds": 0.0} for s in STAGES}
    return StudyResult(study.wd.root, study.study_hash, study.wd.datasets(study.ds_hash), run.report_dir,
                       done.get("parent_run_id"), results, stages)


def translate_stage(run: StudyRun) -> tuple[DatasetsOutput, bool]:
    ds = build_datasets(run.study.cfg, run.study.wd, jobs=run.jobs)
    return ds, ds.reused


def sweep_stage(run: StudyRun, study: Study, resume: bool) -> tuple[Any, bool]:
    """Every cell of the running `study` (fine-tuned and evaluated, or reused), then the sweep's tidy table
    beside its manifest (`safedrift report --sweep-dir` reads it), with the deltas against each base model."""
    import mlflow

    tracking = study.tracking
    assert tracking is not None, "the sweep runs with a tracking store"
    results = run_sweep(study, sweep_name=f"sweep-{study.study_hash}", resume=resume)
    # A cell's manifest names the MLflow run that first evaluated it, possibly in another store: the
    # runs of *this* sweep are the parent's children, found by their cell tag.
    run_ids = _child_runs(mlflow.MlflowClient(tracking.uri), tracking.experiment_id, tracking.parent_run_id)
    missing = [r["cell_id"] for r in results if r["cell_id"] not in run_ids]
    if missing:
        log.warning("no MLflow run of this sweep for cell(s) %s: their deltas are not logged", ", ".join(missing))
    results = [r | {"mlflow_run_id": run_ids.get(r["cell_id"])} for r in results]
    tidy = write_sweep_tidy(results, study.wd, run.sweep_dir, tracking.uri)
    return (results, tidy), all(r["reused"] for r in results)


def _child_runs(client: Any, experiment_id: str, parent_run_id: str | None) -> dict[str, str]:
    """Cell tag -> run id of the parent's child runs, every page of them (a server returns at most
    1,000 runs a page, fewer if it is configured so; the paper grid has 330 cells)."""
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        out |= {r.data.tags.get("safedrift.cell"): r.info.run_id for r in page}
        token = page.token
        if not token:
            return out


def report_stage(run: StudyRun, ds: DatasetsOutput, tidy: Any, parent_run_id: str) -> tuple[Path, bool]:
    """The report, drawn from the sweep's tidy table alone plus the study's provenance, logged to MLflow."""
    import mlflow

    study = run.study
    ctx = study_context(study.cfg, study.study_hash, study.ds_hash, ds.manifest, parent_run_id, run.uri)
    write_report(tidy, ctx, run.report_dir)
    mlflow.log_artifacts(str(run.report_dir), artifact_path="report")
    return run.report_dir, False


def _summary(stages: dict[str, Stage]) -> dict[str, dict[str, Any]]:
    return {name: {"reused": s.reused, "seconds": s.seconds} for name, s in stages.items()}


def _result(run: StudyRun, ds: DatasetsOutput, parent_run_id: str | None, results: list[dict[str, Any]],
            stages: dict[str, Stage]) -> StudyResult:
    return StudyResult(run.study.wd.root, run.study.study_hash, ds.path, run.report_dir, parent_run_id, results,
                       _summary(stages))
