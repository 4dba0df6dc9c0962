"""One cell in the sweep: its two halves and their MLflow record. The Ray Tune trial (``trial``) fine-tunes
a cell (``train_cell``: the cell's nested MLflow run is opened there, so the training steps land in it); the
evaluation stage
(evaluation.py) then evaluates it in the worker that holds its base model (``finish_cell``), writes its
outputs, logs them to the same run, and writes cells/<hash>/manifest.json last, which marks the cell done.
A cell finished by an earlier sweep is logged again from its manifest (``relog_cell``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from cluster import progress
from cluster.connect import placement
from cluster.storage import read_json, read_manifest, write_json_atomic, write_manifest, write_parquet_atomic
from cluster.tracking import point_mlflow
from pipelines.cells import Cell, Study
from pipelines.config import StudyConfig
from pipelines.evaluate import CellEvaluation, EvalSession, Weights, evaluate_cell
from pipelines.evaluate.stats import is_number
from pipelines.finetune import finetune_cell
from pipelines.finetune.checkpoints import trained_weights
from pipelines.hashing import stable_hash
from pipelines.registries.model_store import model_dir
from pipelines.registry import import_modules

log = logging.getLogger(__name__)

__all__ = ["cell_weights", "finish_cell", "flat_params", "log_cell_artifacts", "relog_cell", "train_cell", "trial"]

RUN_FILE = "run.json"  # cells/<hash>/run.json: the cell's MLflow run, opened by whichever half ran first


def trial(params: dict[str, Any], study_json: dict[str, Any]) -> None:
    """A Ray Tune trial (a driver function in its own worker): one cell's fine-tune, its training figures
    reported to Tune. Evaluation happens later, in the worker that holds the cell's base model."""
    from ray import tune

    study = Study.from_json(study_json)
    import_modules(study.cfg.import_modules)  # the user's modules register their components in this worker too
    info = train_cell(study, Cell(**params["cell"]), tune_session=True)
    tune.report({"done": 1, **{k.replace("/", "_"): v for k, v in train_metrics(info).items()}})


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


def _start_run(study: Study, cell: Cell, out: Path) -> Any:
    """The cell's nested MLflow run: the one an earlier half opened (cells/<hash>/run.json), or a new one."""
    import mlflow

    tracking = study.tracking
    assert tracking is not None, "a running study has a tracking store"

    point_mlflow(tracking.uri)
    # The store is named by a hash: a URI may carry a password, which no file may hold.
    store = stable_hash(tracking.uri)
    known = read_json(out / RUN_FILE) if (out / RUN_FILE).exists() else None
    if known and known.get("store") == store and known.get("parent_run_id") == tracking.parent_run_id:
        return mlflow.start_run(run_id=known["run_id"])
    tags = {"safedrift.cell": cell.id, "safedrift.model": cell.model, "safedrift.ft_lang": cell.ft_lang,
            "safedrift.cell_hash": out.name}
    run = mlflow.start_run(run_name=cell.id, experiment_id=tracking.experiment_id,
                           parent_run_id=tracking.parent_run_id, nested=tracking.parent_run_id is not None,
                           tags=tags)
    mlflow.log_params(flat_params(study.cfg, cell))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RUN_FILE, {"run_id": run.info.run_id, "store": store,
                                       "parent_run_id": tracking.parent_run_id})
    return run


def train_cell(study: Study, cell: Cell, tune_session: bool = False) -> dict[str, Any]:
    """Fine-tunes a cell (unless its checkpoint exists) with its steps logged to the cell's MLflow run;
    returns the checkpoint's manifest."""
    out = study.cell_dir(cell)
    progress_file = study.wd.progress() / f"{out.name}.json"
    with _start_run(study, cell, out) as run, progress.for_cell(progress_file, cell.id):
        progress.update("finetune")
        return finetune_cell(study.cfg, cell, model_dir(cell.model), study.ds_path, study.checkpoint_dir(cell),
                             study.tracking.uri, run.info.run_id,
                             tune_session=tune_session,
                             loop_extras={"progress": str(progress_file), "cell_id": cell.id})


def train_metrics(info: dict[str, Any]) -> dict[str, float]:
    """The training figures a cell's record carries: its final loss and the fine-tune's seconds."""
    out: dict[str, float] = {}
    if info.get("train_seconds") is not None:
        out["time/finetune_s"] = float(info["train_seconds"])
    loss = float((info.get("metrics") or {}).get("train_loss", float("nan")))
    if is_number(loss):
        out["train/final_loss"] = loss
    return out


def cell_weights(study: Study, cell: Cell) -> tuple[Weights, dict[str, Any]]:
    """What a cell answers with, and its training record (empty for the base model)."""
    base = model_dir(cell.model)
    if cell.is_base:
        return Weights(base, base), {}
    ckpt = study.checkpoint_dir(cell)
    info = read_manifest(ckpt)
    if info is None:
        raise FileNotFoundError(f"cell {cell.id} has no finished fine-tune at {ckpt}; rerun with --resume")
    trained_dir, adapter = trained_weights(ckpt, study.cfg.finetune.method)
    return Weights(base, trained_dir or base, adapter), info


def finish_cell(study: Study, cell: Cell, session: EvalSession | None = None) -> dict[str, Any]:
    """Evaluates a trained cell (with the worker's session), writes and logs its outputs, and writes its
    manifest last. A cell that already has one is only logged again."""
    import mlflow

    out = study.cell_dir(cell)
    if read_manifest(out) is not None:
        return relog_cell(study, cell)
    weights, train_info = cell_weights(study, cell)
    progress_file = study.wd.progress() / f"{out.name}.json"
    with _start_run(study, cell, out) as run, progress.for_cell(progress_file, cell.id):
        t0 = time.time()
        ev = evaluate_cell(study.cfg, cell, weights, study.ds_path, out, session=session)
        metrics = ev.metrics | train_metrics(train_info) | ev.timing | {"time/evaluate_s": time.time() - t0}
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
        log_cell_artifacts(out, None if cell.is_base else study.checkpoint_dir(cell))
        manifest = write_manifest(out, cell=cell.to_dict(), cell_id=cell.id, cell_hash=out.name, metrics=metrics,
                                  compliance=ev.compliance.to_dicts(), mlflow_run_id=run.info.run_id,
                                  train=train_info,
                                  evaluated_on=placement() | {"loads": session.loads() if session else {},
                                                             "started": t0, "finished": time.time()})
    return manifest | {"reused": False}


def relog_cell(study: Study, cell: Cell) -> dict[str, Any]:
    """A cell finished by an earlier sweep: a nested run in this sweep too (its cached numbers), so a study
    pointed at a new tracking store shows every cell there. No model, no Ray."""
    import mlflow

    out, tracking = study.cell_dir(cell), study.tracking
    done = read_manifest(out)
    assert done is not None, f"relog_cell on an unfinished cell {cell.id}"
    assert tracking is not None, "a running study has a tracking store"
    point_mlflow(tracking.uri)
    tags = {"safedrift.cell": cell.id, "safedrift.model": cell.model, "safedrift.ft_lang": cell.ft_lang,
            "safedrift.cell_hash": out.name, "safedrift.reused": "true"}
    with mlflow.start_run(run_name=cell.id, experiment_id=tracking.experiment_id,
                          parent_run_id=tracking.parent_run_id, nested=tracking.parent_run_id is not None,
                          tags=tags):
        mlflow.log_params(flat_params(study.cfg, cell))
        mlflow.log_metrics(done["metrics"])
        log_cell_artifacts(out, None if cell.is_base else study.checkpoint_dir(cell))
    return done | {"reused": True}


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
