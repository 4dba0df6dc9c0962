"""Stage 2+3+4+5 over the grid: Ray Tune runs one trial per cell (the base model is a cell too). Each
trial is a driver function that fine-tunes with a TorchTrainer (Train V2 inside Tune) and evaluates.

Resuming has two layers. A cell's manifest (cells/<hash>/manifest.json, written last) is the ground
truth: a cell that has one is never scheduled again. Tune's own experiment state, when a killed driver
left a usable one, is restored so that the interrupted grid keeps its trials; when it is missing, half
written or unreadable, a new grid of the cells still pending runs instead, which redoes nothing either."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.storage import read_manifest
from pipelines.cell_run import Tracking, cell_dir, run_cell
from pipelines.cells import Cell, study_cells
from pipelines.config import StudyConfig
from pipelines.sweep_resources import TRIAL_CPU, SweepError, plan_concurrency
from pipelines.sweep_resources import check_cluster as check_fits  # the name other modules and tests use

log = logging.getLogger(__name__)

__all__ = ["SweepError", "check_fits", "fit_grid", "run_sweep"]


def _trial(params: dict[str, Any], cfg_json: dict[str, Any], workdir: str, ds_path: str, ds_hash: str,
           tracking: dict[str, Any]) -> None:
    from ray import tune

    cfg = StudyConfig.model_validate(cfg_json)
    cell = Cell(**params["cell"])
    result = run_cell(cfg, cell, Path(workdir), Path(ds_path), ds_hash, Tracking(**tracking), tune_session=True)
    tune.report({"done": 1, **{k.replace("/", "_"): v for k, v in result["metrics"].items()}})


def _cell_trial_name(trial: Any) -> str:
    # Deterministic trial names and directories (the cell id), so a restored grid finds its trials.
    return Cell(**trial.config["cell"]).id


def _restorable(path: Path) -> bool:
    """Whether Tune left a state at `path` that Tuner.restore can use. Tuner.can_restore only sees
    tuner.pkl, which Tune writes before the first trial; a driver killed before Tune's first
    experiment_state-*.json (or while one was being written) leaves a state that fails on restore."""
    from ray import tune

    if not tune.Tuner.can_restore(str(path)):
        log.info("no Tune state at %s", path)
        return False
    states = sorted(path.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        log.warning("Tune state at %s is partial (tuner.pkl but no experiment_state-*.json)", path)
        return False
    try:
        json.loads(states[-1].read_text())
    except (OSError, ValueError) as exc:
        log.warning("Tune state %s is unreadable (%s)", states[-1], exc)
        return False
    return True


def _set_aside(path: Path) -> None:
    # A new grid must not mix its trials with a stale experiment's; the old one is kept for its logs.
    if path.exists():
        stale = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(stale)
        log.info("set the old Tune state aside: %s", stale)


def fit_grid(trainable: Any, configs: list[dict[str, Any]], *, storage: Path, name: str, max_concurrent: int,
             max_failures: int = 0, resume: bool = True,
             trial_name: Callable[[Any], str] = _cell_trial_name) -> Any:
    """One Tune trial per config (a grid, no early stopping); resumes an interrupted grid of the same name
    when Tune's state allows, else starts a new one. Returns Tune's ResultGrid."""
    from ray import tune

    path = storage / name
    if resume and _restorable(path):
        try:
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
            log.info("resuming the interrupted Tune grid at %s (its trials and concurrency)", path)
            return tuner.fit()
        except Exception as exc:  # e.g. a tuner.pkl from another Ray version: a new grid redoes nothing done
            log.warning("could not resume the Tune grid at %s (%s: %s); starting a new grid of %d pending cell(s)",
                        path, type(exc).__name__, exc, len(configs))
    elif resume:
        log.info("starting a new Tune grid of %d pending cell(s) at %s", len(configs), path)
    _set_aside(path)
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return tuner.fit()


def run_sweep(cfg: StudyConfig, workdir: Path, ds_path: Path, ds_hash: str, tracking: Tracking,
              sweep_name: str, resume: bool = True) -> list[dict[str, Any]]:
    from ray import tune

    cells = study_cells(cfg)
    pending = [c for c in cells if read_manifest(cell_dir(workdir, cfg, c, ds_hash)) is None]
    done = [c for c in cells if c not in pending]
    log.info("sweep %s: %d cell(s); reused (finished earlier): %s; to run: %s", sweep_name, len(cells),
             ", ".join(c.id for c in done) or "none", ", ".join(c.id for c in pending) or "none")
    if pending:
        # Base cells train nothing: only cells that fine-tune need the workers to fit.
        concurrency = plan_concurrency(cfg, len(pending)) if any(not c.is_base for c in pending) else 1
        trainable = tune.with_resources(
            tune.with_parameters(_trial, cfg_json=cfg.model_dump(mode="json"), workdir=str(workdir),
                                 ds_path=str(ds_path), ds_hash=ds_hash, tracking=tracking.__dict__),
            # The trial itself only drives: its TorchTrainer asks for the workers' CPUs. 0 is refused.
            {"cpu": TRIAL_CPU},
        )
        grid = fit_grid(trainable, [c.to_dict() for c in pending], storage=workdir / "tune", name=sweep_name,
                        max_concurrent=concurrency, max_failures=cfg.sweep.max_failures, resume=resume)
        failed = [Cell(**r.config["cell"]).id for r in grid if r.error is not None]
        if failed:
            raise SweepError(f"{len(failed)} cell(s) failed: {', '.join(failed)}; see {workdir / 'tune' / sweep_name} "
                             "for their logs, then rerun with --resume")
    # Cells finished by an earlier sweep get a nested run in this sweep too (their cached numbers), so a
    # study pointed at a new tracking store shows every cell there. No Ray needed: nothing is computed.
    for c in done:
        run_cell(cfg, c, workdir, ds_path, ds_hash, tracking)
    results = []
    for c in cells:
        manifest = read_manifest(cell_dir(workdir, cfg, c, ds_hash))
        if manifest is None:
            raise SweepError(f"cell {c.id} has no result after the sweep; rerun with --resume")
        results.append(manifest | {"reused": c in done})
    return results
