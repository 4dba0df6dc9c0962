"""Everything one cell does, in order: fine-tune (unless base) → generate → judge → measure, logged to
its nested MLflow run. cells/<hash>/manifest.json, written last, marks the cell done."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import polars as pl

from cluster.storage import read_manifest, write_manifest, write_parquet_atomic
from pipelines.cells import Cell, cell_hash, train_hash
from pipelines.config import StudyConfig
from pipelines.finetune import finetune_cell
from pipelines.generate import generate_cell
from pipelines.judge import judge_answers
from pipelines.measure import compliance_by_lang, metric_dict
from pipelines.model_store import model_dir
from pipelines.translate import read_split

log = logging.getLogger(__name__)


@dataclass
class Tracking:
    uri: str
    experiment_id: str
    parent_run_id: str | None


def cell_dir(workdir: Path, cfg: StudyConfig, cell: Cell, datasets_hash: str) -> Path:
    return workdir / "cells" / cell_hash(cfg, cell, datasets_hash)


def flat_params(cfg: StudyConfig, cell: Cell) -> dict[str, str]:
    def walk(prefix: str, obj: Any, out: dict[str, str]) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v, out)
        else:
            out[prefix] = str(obj)[:500]

    out: dict[str, str] = {}
    walk("", cfg.model_dump(mode="json"), out)
    walk("cell", cell.to_dict(), out)
    return out


def eval_prompts(cfg: StudyConfig, ds_path: Path) -> pl.DataFrame:
    return pl.concat([read_split(ds_path, "eval", lang).select("id", "lang", "category", "prompt")
                      for lang in cfg.eval_langs])


def run_cell(cfg: StudyConfig, cell: Cell, workdir: Path, ds_path: Path, ds_hash: str, tracking: Tracking,
             tune_session: bool = False) -> dict[str, Any]:
    out = cell_dir(workdir, cfg, cell, ds_hash)
    done = read_manifest(out)
    mlflow.set_tracking_uri(tracking.uri)
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
            return done | {"reused": True}

        base_dir = model_dir(cell.model)
        adapter = None
        train_info: dict[str, Any] = {}
        if not cell.is_base:
            ckpt = workdir / "checkpoints" / train_hash(cfg, cell, ds_hash)
            train_info = finetune_cell(cfg, cell, base_dir, ds_path, ckpt, tracking.uri, run.info.run_id,
                                       tune_session=tune_session)
            adapter = ckpt / "adapter"
            mlflow.log_artifacts(str(adapter), artifact_path="adapter")

        answers = generate_cell(base_dir, adapter, eval_prompts(cfg, ds_path), cfg.generate, out / "generations",
                                desc=f"generate {cell.id}")
        judged = judge_answers(answers, cfg.judge)
        table = compliance_by_lang(judged)
        metrics = metric_dict(table)
        if train_info.get("metrics"):
            metrics["train/final_loss"] = float(train_info["metrics"].get("train_loss", float("nan")))
        write_parquet_atomic(judged, out / "judged.parquet")
        mlflow.log_metrics(metrics)
        # The answers stay in the workdir and MLflow, not in logs.
        mlflow.log_artifact(str(out / "judged.parquet"), artifact_path="answers")
        manifest = write_manifest(out, cell=cell.to_dict(), cell_id=cell.id, metrics=metrics,
                                  compliance=table.to_dicts(), mlflow_run_id=run.info.run_id,
                                  train=train_info)
    return manifest | {"reused": False}
