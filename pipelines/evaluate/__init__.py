"""Everything one cell does, in order: fine-tune (unless base) → generate → judge → measure, logged to
its nested MLflow run. cells/<hash>/manifest.json, written last, marks the cell done."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import polars as pl

from cluster.storage import read_manifest, write_manifest, write_parquet_atomic
from pipelines.cells import Cell, cell_hash, train_hash
from pipelines.config import StudyConfig
from pipelines.evalsets import eval_prompts, heldout_benign, safe_prompts
from pipelines.finetune import finetune_cell
from pipelines.generate import generate_cell
from pipelines.judge import judge_answers
from pipelines.measure import (
    Tidy,
    add_safety_rows,
    compliance_by_category,
    compliance_by_lang,
    fidelity_by_lang,
    metric_dict,
    overrefusal_by_lang,
)
from pipelines.model_store import model_dir
from pipelines.registries.judges import make_judge

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
        if isinstance(obj, dict) and obj:
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v, out)
        else:
            out[prefix] = str(obj)[:500]

    out: dict[str, str] = {}
    walk("", cfg.model_dump(mode="json"), out)
    walk("cell", cell.to_dict(), out)
    return out


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
            log_cell_artifacts(out, None if cell.is_base else workdir / "checkpoints" / train_hash(cfg, cell, ds_hash))
            return done | {"reused": True}

        base_dir = model_dir(cell.model)
        eval_dir, adapter = base_dir, None  # what this cell answers with: base, base + adapter, or a full fine-tune
        train_info: dict[str, Any] = {}
        # Wall time per stage: what a user sizing a preset needs, and what the README's cost table cites.
        timing: dict[str, float] = {}
        t_stage = time.time()
        if not cell.is_base:
            ckpt = workdir / "checkpoints" / train_hash(cfg, cell, ds_hash)
            train_info = finetune_cell(cfg, cell, base_dir, ds_path, ckpt, tracking.uri, run.info.run_id,
                                       tune_session=tune_session)
            from pipelines.checkpoints import trained_weights

            trained_dir, adapter = trained_weights(ckpt, cfg.finetune.method)
            eval_dir = trained_dir or base_dir
        timing["time/finetune_s"] = time.time() - t_stage

        unsafe, safe, benign = (f(cfg, ds_path) for f in (eval_prompts, safe_prompts, heldout_benign))
        t0 = time.time()
        answers = generate_cell(eval_dir, adapter, unsafe, cfg.generate, out / "generations",
                                desc=f"generate {cell.id}")
        gen_s = time.time() - t0
        safe_answers = generate_cell(eval_dir, adapter, safe.select("id", "lang", "category", "prompt", "prompt_en"),
                                     cfg.generate, out / "generations_safe", desc=f"generate safe {cell.id}")
        timing["time/generate_s"] = time.time() - t0
        t_stage = time.time()
        judge = make_judge(cfg.judge.name, **cfg.judge.options)
        judged = judge_answers(answers, cfg.judge, judge)
        judged_safe = judge_answers(safe_answers, cfg.judge, judge) if safe_answers.height else safe_answers
        timing["time/judge_s"] = time.time() - t_stage
        table = compliance_by_lang(judged)
        metrics = metric_dict(table)
        tidy = Tidy(cell.to_dict(), cell.id)
        over = overrefusal_by_lang(judged_safe) if safe_answers.height else []
        fid = fidelity_by_lang(answers) if cfg.evaluate.fidelity else []
        add_safety_rows(tidy, table, over, fid, compliance_by_category(judged), metrics)
        for (lang,), g in judged.group_by("lang", maintain_order=True):
            metrics[f"judge/back_translated_share/{lang}"] = float(g["back_translated"].mean() or 0.0)
        metrics["generate/answers_per_s"] = float(unsafe.height / gen_s) if gen_s > 0 and unsafe.height else 0.0
        metrics |= judge_agreement_metrics(cfg, judge, tidy)
        t_stage = time.time()
        metrics |= capability_and_drift(cfg, cell, base_dir, eval_dir, adapter, unsafe, safe, benign, tidy)
        timing["time/capability_drift_s"] = time.time() - t_stage
        metrics |= timing
        log.info("cell %s: %s", cell.id, ", ".join(f"{k.split('/')[1]} {v:.0f}s" for k, v in timing.items()))
        if train_info.get("metrics"):
            metrics["train/final_loss"] = float(train_info["metrics"].get("train_loss", float("nan")))
        # NaN (a rate over no parseable answer) is left out: the tidy table keeps it as null with n.
        metrics = {k: float(v) for k, v in metrics.items() if v == v}
        write_parquet_atomic(judged, out / "judged.parquet")
        if judged_safe.height:
            write_parquet_atomic(judged_safe, out / "judged_safe.parquet")
        write_parquet_atomic(tidy.frame(), out / "metrics_tidy.parquet")
        mlflow.log_metrics(metrics)
        log_cell_artifacts(out, None if cell.is_base else ckpt)
        manifest = write_manifest(out, cell=cell.to_dict(), cell_id=cell.id, cell_hash=out.name, metrics=metrics,
                                  compliance=table.to_dicts(), mlflow_run_id=run.info.run_id,
                                  train=train_info)
    return manifest | {"reused": False}


def log_cell_artifacts(out: Path, ckpt: Path | None) -> None:
    """The adapter, the judged answers and the tidy metrics of a cell, to its MLflow run; also for a
    cell reused from an earlier sweep, so a study re-logged to a new tracking server carries them too.
    The answers stay in the workdir and MLflow, never in logs."""
    if ckpt is not None and (ckpt / "adapter").is_dir():
        mlflow.log_artifacts(str(ckpt / "adapter"), artifact_path="adapter")
    for name, folder in (("judged.parquet", "answers"), ("judged_safe.parquet", "answers"),
                         ("metrics_tidy.parquet", "metrics")):
        if (out / name).exists():
            mlflow.log_artifact(str(out / name), artifact_path=folder)


def judge_agreement_metrics(cfg: StudyConfig, judge: Any, tidy: Tidy) -> dict[str, float]:
    """The configured judge's accuracy and Cohen's kappa on held-out human labels (cached per judge
    config), logged with every cell so each number says how far its judge can be trusted."""
    if not cfg.judge.agreement:
        return {}
    from pipelines.judge_agreement import cached_agreement

    ag = cached_agreement(judge, cfg.judge.options, cfg.judge.agreement_limit)
    mlflow.log_params({"judge/heldout_n": int(ag["n"]), "judge/name": judge.name})
    tidy.add("en", "judge/kappa", ag["kappa"], n=int(ag["n"]))
    tidy.add("en", "judge/accuracy", ag["accuracy"], n=int(ag["n"]))
    return {"judge/kappa": ag["kappa"], "judge/accuracy": ag["accuracy"],
            "judge/heldout_unparseable": ag["unparseable"]}


def capability_and_drift(cfg: StudyConfig, cell: Cell, base_dir: Path, eval_dir: Path, adapter: Path | None,
                         unsafe: pl.DataFrame,
                         safe: pl.DataFrame, benign: pl.DataFrame, tidy: Tidy) -> dict[str, float]:
    """WikiText-2 and held-out benign perplexity, an optional user MMLU-style file, and (fine-tuned cells)
    hidden-state drift against the base model projected on the base model's refusal direction."""
    from pipelines import capability, drift
    from pipelines.generate import load_for_generation

    ev = cfg.evaluate
    metrics: dict[str, float] = {}
    model, tok = load_for_generation(eval_dir, adapter, cfg.generate.threads)
    if ev.ppl_tokens:
        ppl, n = capability.wikitext_ppl(model, tok, ev.ppl_tokens, ev.ppl_window, ev.ppl_stride)
        metrics["capability/ppl_wikitext2"] = ppl
        tidy.add("en", "ppl_wikitext2", ppl, n=n)
    for (lang,), g in benign.group_by("lang", maintain_order=True):
        ppl, n = capability.answer_ppl(model, tok, list(zip(g["instruction"], g["output"], strict=True)))
        metrics[f"capability/ppl_benign/{lang}"] = ppl
        tidy.add(lang, "ppl_benign", ppl, n=n)
    # User files were checked before the study started (user_evalsets.check_user_files).
    if ev.mmlu_path:
        acc, n = capability.mmlu_accuracy(model, tok, Path(ev.mmlu_path), ev.user_set_limit)
        metrics["capability/mmlu_acc"] = acc
        tidy.add("en", "mmlu_acc", acc, n=n)
    if ev.alpacaeval_path:
        scores = capability.alpacaeval_scores(model, tok, Path(ev.alpacaeval_path), cfg.generate, ev.user_set_limit)
        metrics |= scores
        n = int(scores["capability/alpacaeval_n"])
        for k in ("alpacaeval_ref_sim", "alpacaeval_ref_ppl", "alpacaeval_answer_tokens"):
            tidy.add("en", k, scores[f"capability/{k}"], n=n)
    if ev.drift and not cell.is_base:
        base, btok = load_for_generation(base_dir, None, cfg.generate.threads)
        prompts = [p for _, g in unsafe.group_by("lang", maintain_order=True) for p in g["prompt"].head(ev.n_drift)]
        harmful = unsafe.filter(pl.col("lang") == cfg.eval_langs[0])["prompt"].head(ev.n_drift).to_list()
        harmless = safe.filter(pl.col("lang") == cfg.eval_langs[0])["prompt"].head(ev.n_drift).to_list()
        if harmful and harmless:
            direction = drift.refusal_direction(base, btok, harmful, harmless)
            d = drift.drift_metrics(drift.last_token_means(base, btok, prompts),
                                    drift.last_token_means(model, tok, prompts), direction)
            metrics |= d
            for k, v in d.items():
                tidy.add("all", k, v, n=len(prompts))
        del base
    del model
    return metrics
