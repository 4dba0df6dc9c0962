"""The trial that runs one cell and logs it: reuse a finished cell (its manifest) or fine-tune it (unless
it is the base model) and evaluate it, then write its outputs, log them to the cell's nested MLflow run,
and write cells/<hash>/manifest.json last, which marks the cell done."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import progress
from cluster.storage import read_manifest, write_manifest, write_parquet_atomic
from cluster.tracking import point_mlflow
from pipelines.cells import Cell, cell_dir, checkpoint_dir
from pipelines.config import StudyConfig
from pipelines.evaluate import CellEvaluation, Weights, evaluate_cell
from pipelines.finetune import finetune_cell
from pipelines.finetune.checkpoints import trained_weights
from pipelines.layout import Workdir
from pipelines.presets import check_components
from pipelines.registries.model_store import model_dir

log = logging.getLogger(__name__)

__all__ = ["Tracking", "cell_dir", "flat_params", "log_cell_artifacts", "run_cell", "trial"]


@dataclass
class Tracking:
    uri: str
    experiment_id: str
    parent_run_id: str | None


def trial(params: dict[str, Any], cfg_json: dict[str, Any], workdir: str, ds_path: str, ds_hash: str,
          tracking: dict[str, Any]) -> None:
    """A Ray Tune trial (a driver function in its own worker): one cell, its metrics reported to Tune."""
    from ray import tune

    cfg = StudyConfig.model_validate(cfg_json)
    check_components(cfg)  # the user's modules register their components in this worker too
    cell = Cell(**params["cell"])
    result = run_cell(cfg, cell, Workdir(Path(workdir)), Path(ds_path), ds_hash, Tracking(**tracking),
                      tune_session=True)
    tune.report({"done": 1, **{k.replace("/", "_"): v for k, v in result["metrics"].items()}})


def flat_params(cfg: StudyConfig, cell: Cell) -> dict[str, str]:
    """The config as MLflow params (dotted keys), from its public view: no secret reaches the store."""

    def walk(prefix: str, obj: Any, out: dict[str, str]) -> None:
        if isinstance(obj, dict) and obj:
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v, out)
        else:
            out[prefix] = str(obj)[:500]

    out: dict[str, str] = {}
    walk("", cfg.public(), out)
    walk("cell", cell.to_dict(), out)
    return out


def run_cell(cfg: StudyConfig, cell: Cell, wd: Workdir, ds_path: Path, ds_hash: str, tracking: Tracking,
             tune_session: bool = False) -> dict[str, Any]:
    import mlflow

    out = cell_dir(wd, cfg, cell, ds_hash)
    ckpt = None if cell.is_base else checkpoint_dir(wd, cfg, cell, ds_hash)
    done = read_manifest(out)
    point_mlflow(tracking.uri)
    tags = {"safedrift.cell": cell.id, "safedrift.model": cell.model, "safedrift.ft_lang": cell.ft_lang,
            "safedrift.cell_hash": out.name}
    with mlflow.start_run(run_name=cell.id, experiment_id=tracking.experiment_id,
                          parent_run_id=tracking.parent_run_id, nested=tracking.parent_run_id is not None,
                          tags=tags) as run:
        mlflow.log_params(flat_params(cfg, cell))
        if done is not None:
            # A cell finished by an earlier sweep: this sweep's parent still gets its numbers.
            mlflow.set_tag("safedrift.reused", "true")
            mlflow.log_metrics(done["metrics"])
            log_cell_artifacts(out, ckpt)
            return done | {"reused": True}

        t0 = time.time()
        progress_file = wd.progress() / f"{out.name}.json"
        with progress.for_cell(progress_file, cell.id):
            weights, train_info = _weights(cfg, cell, ds_path, ckpt, tracking.uri, run.info.run_id, tune_session,
                                           progress_file)
            finetune_s = time.time() - t0
            ev = evaluate_cell(cfg, cell, weights, ds_path, out)
        metrics = ev.metrics | {"time/finetune_s": finetune_s} | ev.timing
        if train_info.get("metrics"):
            loss = float(train_info["metrics"].get("train_loss", float("nan")))
            if loss == loss:
                metrics["train/final_loss"] = loss
        log.info("cell %s: %s", cell.id, ", ".join(f"{k.split('/')[1]} {v:.0f}s" for k, v in metrics.items()
                                                  if k.startswith("time/")))
        if ev.judge.get("heldout_n") is not None:
            mlflow.log_params({"judge/heldout_n": ev.judge["heldout_n"], "judge/name": ev.judge["name"]})
        # How each eval language was judged (as written, back-translated by which route, natively).
        mlflow.log_params({f"{prefix}/{key}/{r['language']}": str(r.get(key))
                           for prefix in ("judge", "judge2") for r in ev.judge.get(f"{prefix}_languages") or []
                           for key in ("mode", "route")})
        _write_outputs(ev, out)
        mlflow.log_metrics(metrics)
        log_cell_artifacts(out, ckpt)
        manifest = write_manifest(out, cell=cell.to_dict(), cell_id=cell.id, cell_hash=out.name, metrics=metrics,
                                  compliance=ev.compliance.to_dicts(), mlflow_run_id=run.info.run_id,
                                  train=train_info)
    return manifest | {"reused": False}


def _weights(cfg: StudyConfig, cell: Cell, ds_path: Path, ckpt: Path | None, tracking_uri: str, run_id: str,
             tune_session: bool, progress_file: Path) -> tuple[Weights, dict[str, Any]]:
    """What the cell answers with (training it first unless it is the base model) and the training record."""
    base = model_dir(cell.model)
    if ckpt is None:
        return Weights(base, base), {}
    progress.update("finetune")
    info = finetune_cell(cfg, cell, base, ds_path, ckpt, tracking_uri, run_id, tune_session=tune_session,
                         loop_extras={"progress": str(progress_file), "cell_id": cell.id})
    trained_dir, adapter = trained_weights(ckpt, cfg.finetune.method)
    return Weights(base, trained_dir or base, adapter), info


def _write_outputs(ev: CellEvaluation, out: Path) -> None:
    write_parquet_atomic(ev.judged, out / "judged.parquet")
    if ev.judged_safe.height:
        write_parquet_atomic(ev.judged_safe, out / "judged_safe.parquet")
    write_parquet_atomic(ev.tidy.frame(), out / "metrics_tidy.parquet")


def log_cell_artifacts(out: Path, ckpt: Path | None) -> None:
    """The adapter, the judged answers and the tidy metrics of a cell, to its MLflow run; also for a
    cell reused from an earlier sweep, so a study re-logged to a new tracking server carries them too.
    The answers stay in the workdir and MLflow, never in logs."""
    import mlflow

    if ckpt is not None and (ckpt / "adapter").is_dir():
        mlflow.log_artifacts(str(ckpt / "adapter"), artifact_path="adapter")
    for name, folder in (("judged.parquet", "answers"), ("judged_safe.parquet", "answers"),
                         ("metrics_tidy.parquet", "metrics")):
        if (out / name).exists():
            mlflow.log_artifact(str(out / name), artifact_path=folder)
