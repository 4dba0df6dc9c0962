"""Stage 2+3+4+5 over the grid: Ray Tune runs one trial per cell (the base model is a cell too). Each
trial is a driver function that fine-tunes with a TorchTrainer (Train V2 inside Tune) and evaluates.
Cells already done are not scheduled again; an interrupted sweep resumes from Tune's own state."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cluster.storage import read_manifest
from pipelines.cell_run import Tracking, cell_dir, run_cell
from pipelines.cells import Cell, study_cells
from pipelines.config import StudyConfig

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    pass


def _trial(params: dict[str, Any], cfg_json: dict[str, Any], workdir: str, ds_path: str, ds_hash: str,
           tracking: dict[str, Any]) -> None:
    from ray import tune

    cfg = StudyConfig.model_validate(cfg_json)
    cell = Cell(**params["cell"])
    result = run_cell(cfg, cell, Path(workdir), Path(ds_path), ds_hash, Tracking(**tracking), tune_session=True)
    tune.report({"done": 1, **{k.replace("/", "_"): v for k, v in result["metrics"].items()}})


def check_fits(cfg: StudyConfig) -> None:
    """A cell that cannot be scheduled would wait forever: fail first, naming the fix."""
    import ray

    res = ray.cluster_resources()
    ft = cfg.finetune
    need_cpu = ft.num_workers * ft.cpus_per_worker
    if res.get("CPU", 0) < need_cpu:
        raise SweepError(f"one cell needs {need_cpu:g} CPUs (finetune.num_workers={ft.num_workers} × "
                         f"cpus_per_worker={ft.cpus_per_worker:g}) but the cluster has {res.get('CPU', 0):g}; "
                         "lower finetune.num_workers or cpus_per_worker, or add nodes")
    if ft.use_gpu and res.get("GPU", 0) < ft.num_workers:
        raise SweepError(f"one cell needs {ft.num_workers} GPUs but the cluster has {res.get('GPU', 0):g}; "
                         "set finetune.use_gpu=false or add GPU nodes")


def run_sweep(cfg: StudyConfig, workdir: Path, ds_path: Path, ds_hash: str, tracking: Tracking,
              sweep_name: str, resume: bool = True) -> list[dict[str, Any]]:
    from ray import tune

    cells = study_cells(cfg)
    pending = [c for c in cells if read_manifest(cell_dir(workdir, cfg, c, ds_hash)) is None]
    if pending:
        check_fits(cfg)
        storage = workdir / "tune"
        trainable = tune.with_resources(
            tune.with_parameters(_trial, cfg_json=cfg.model_dump(mode="json"), workdir=str(workdir),
                                 ds_path=str(ds_path), ds_hash=ds_hash, tracking=tracking.__dict__),
            # The trial itself only drives: its TorchTrainer asks for the workers' CPUs. 0 is refused.
            {"cpu": 0.01},
        )
        path = storage / sweep_name
        if resume and tune.Tuner.can_restore(str(path)):
            log.info("resuming sweep %s", path)
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"cell": tune.grid_search([c.to_dict() for c in pending])},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=cfg.sweep.max_concurrent,
                    trial_name_creator=lambda t: Cell(**t.config["cell"]).id,
                    trial_dirname_creator=lambda t: Cell(**t.config["cell"]).id,
                ),
                run_config=tune.RunConfig(name=sweep_name, storage_path=str(storage),
                                          failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures)),
            )
        grid = tuner.fit()
        failed = [Cell(**r.config["cell"]).id for r in grid if r.error is not None]
        if failed:
            raise SweepError(f"{len(failed)} cell(s) failed: {', '.join(failed)}; see {path} for their logs, "
                             "then rerun with --resume")
    # Cells finished by an earlier sweep get a nested run in this sweep too (their cached numbers), so a
    # study pointed at a new tracking store shows every cell there. No Ray needed: nothing is computed.
    for c in cells:
        if c not in pending:
            run_cell(cfg, c, workdir, ds_path, ds_hash, tracking)
    results = []
    for c in cells:
        manifest = read_manifest(cell_dir(workdir, cfg, c, ds_hash))
        if manifest is None:
            raise SweepError(f"cell {c.id} has no result after the sweep")
        results.append(manifest | {"reused": c not in pending})
    return results
