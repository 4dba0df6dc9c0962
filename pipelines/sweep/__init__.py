"""The grid, in two stages. Training: Ray Tune runs one trial per cell that still needs its fine-tune
(cell.py's trial: a driver function that fine-tunes with a TorchTrainer, Train V2 inside Tune; cell.py holds
both halves of a cell); grid.py holds the
Tune plumbing and resources.py what the cluster can hold. Evaluation (evaluation.py): once the grid is
done, one worker per base model, reserving its GPUs/CPUs, evaluates all of that model's cells (the base
model is a cell too) with one copy of the model.

Resuming has three layers. A cell's manifest (cells/<hash>/manifest.json, written last) is the ground
truth: a cell that has one is never scheduled again. A fine-tune's manifest (checkpoints/<hash>) means the
cell is trained, so only its evaluation runs. Tune's own experiment state, when a killed driver left a
usable one, is restored so that the interrupted grid keeps its trials; when it is missing, half written or
unreadable, a new grid of the cells still untrained runs instead, which redoes nothing either."""

from __future__ import annotations

import logging
from typing import Any

from cluster.storage import read_manifest
from pipelines.cells import Cell, Study
from pipelines.errors import SweepError
from pipelines.sweep.cell import relog_cell, trial
from pipelines.sweep.evaluation import run_evaluation
from pipelines.sweep.grid import fit_grid
from pipelines.sweep.resources import TRIAL_CPU, plan_concurrency
from pipelines.sweep.resources import check_cluster as check_fits

__all__ = ["SweepError", "check_fits", "fit_grid", "run_sweep"]

log = logging.getLogger(__name__)


def run_sweep(study: Study, sweep_name: str, resume: bool = True) -> list[dict[str, Any]]:
    """Every cell of the running `study` (its data sets translated, its tracking store set up) trained and
    evaluated, or reused; returns each cell's manifest."""
    cells = study.cells()
    pending = [c for c in cells if read_manifest(study.cell_dir(c)) is None]
    done = [c for c in cells if c not in pending]
    untrained = [c for c in pending if not c.is_base and read_manifest(study.checkpoint_dir(c)) is None]
    log.info("sweep %s: %d cell(s); reused (finished earlier): %s; to train: %s; to evaluate: %s", sweep_name,
             len(cells), ", ".join(c.id for c in done) or "none", ", ".join(c.id for c in untrained) or "none",
             ", ".join(c.id for c in pending) or "none")
    if untrained:
        _train(study, sweep_name, untrained, resume)
    run_evaluation(study, pending)
    # Cells finished by an earlier sweep get a nested run in this sweep too (their cached numbers), so a
    # study pointed at a new tracking store shows every cell there. No Ray needed: nothing is computed.
    for c in done:
        relog_cell(study, c)
    results = []
    for c in cells:
        manifest = read_manifest(study.cell_dir(c))
        if manifest is None:
            raise SweepError(f"cell {c.id} has no result after the sweep; rerun with --resume")
        results.append(manifest | {"reused": c in done})
    return results


def _train(study: Study, sweep_name: str, cells: list[Cell], resume: bool) -> None:
    from ray import tune

    cfg, wd = study.cfg, study.wd
    trainable = tune.with_resources(
        tune.with_parameters(trial, study_json=study.to_json()),
        # The trial itself only drives: its TorchTrainer asks for the workers' CPUs. 0 is refused.
        {"cpu": TRIAL_CPU},
    )
    grid = fit_grid(trainable, [c.to_dict() for c in cells], storage=wd.tune(), name=sweep_name,
                    max_concurrent=plan_concurrency(cfg, len(cells)), max_failures=cfg.sweep.max_failures,
                    resume=resume)
    failed = [Cell(**r.config["cell"]).id for r in grid if r.error is not None]
    if failed:
        raise SweepError(f"{len(failed)} cell(s) failed to train: {', '.join(failed)}; see "
                         f"{wd.tune() / sweep_name} for their logs, then rerun with --resume")
