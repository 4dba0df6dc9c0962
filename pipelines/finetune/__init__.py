"""Fine-tune one cell: Ray Train TorchTrainer, DeepSpeed ZeRO-2/3, peft LoRA or full fine-tuning
(the per-worker recipe is in recipe.py). Resumable checkpoints every finetune.checkpoint_every_steps
steps through ray.train.report, so a killed worker resumes (FailureConfig) instead of restarting the cell.
Writes checkpoints/<train hash>/{adapter,export} + manifest.json (layout: checkpoints.py)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from cluster.storage import atomic_dir, read_manifest, write_manifest
from pipelines.cells import Cell
from pipelines.config import FinetuneConfig, StudyConfig
from pipelines.errors import FinetuneError
from pipelines.finetune import checkpoints as ck
from pipelines.finetune.data import StepPlan, build_sequences, load_tokenizer, plan_steps
from pipelines.finetune.deepspeed_config import dist_backend
from pipelines.finetune.recipe import benign_rows, train_loop_per_worker
from pipelines.layout import Workdir
from pipelines.registries.models import peft_target_modules
from pipelines.translate import read_split

__all__ = ["check_data", "check_trainable", "finetune_cell", "loop_config", "make_trainer"]

log = logging.getLogger(__name__)



def check_trainable(model_dir: Path, alias: str) -> None:
    """Fails before any worker starts when the model cannot be fine-tuned as a chat model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if not tok.chat_template:
        raise FinetuneError(
            f"model '{alias}' has no chat template, so its examples cannot be formatted as chat turns. "
            "Use an instruction-tuned model, or add a chat_template to its tokenizer_config.json."
        )


def check_data(ft: FinetuneConfig, cell: Cell, model_dir: Path, datasets_path: Path) -> StepPlan:
    """The cell's training set, as the workers will see it, must make at least one optimizer step on
    every worker: fail here, naming the setting to change, rather than inside Ray Train."""
    rows = benign_rows(datasets_path, cell.ft_lang)
    if not rows:
        before = read_split(datasets_path, "benign", cell.ft_lang, qa_filter=False).height
        policy = (read_manifest(datasets_path) or {}).get("qa_policy") or {}
        raise FinetuneError(
            f"the benign fine-tuning set for '{cell.ft_lang}' has no rows after QA filtering ({before} before; "
            f"policy {policy}). Loosen translate.qa (drop fewer translate.qa.drop_flags, "
            "require_lang_id=false, a lower or null min_chrf) or increase data.benign.n")
    tok = load_tokenizer(model_dir)
    seqs = build_sequences(tok, rows, ft)
    if not seqs:
        raise FinetuneError(
            f"none of the {len(rows)} '{cell.ft_lang}' examples leaves a response token within "
            f"finetune.max_length={ft.max_length}: increase finetune.max_length")
    return plan_steps(len(seqs), ft.num_workers, ft, cell.epochs)



def loop_config(cfg: StudyConfig, cell: Cell, model_dir: Path, datasets_path: Path,
                tracking_uri: str | None = None, mlflow_run_id: str | None = None) -> dict[str, Any]:
    ft = cfg.finetune
    return {
        "finetune": ft.model_dump(mode="json"), "model_dir": str(model_dir), "datasets_path": str(datasets_path),
        "ft_lang": cell.ft_lang, "seed": cell.seed, "epochs": cell.epochs,
        # A name list, or a regex that keeps a multimodal model's LoRA in its language model (gemma-3-4b-it).
        "lora_targets": ft.lora.target_modules or peft_target_modules(cell.model),
        "tracking_uri": tracking_uri, "mlflow_run_id": mlflow_run_id,
    }


def make_trainer(ft: FinetuneConfig, lc: dict[str, Any], name: str, storage_path: Path,
                 callbacks: list[Any] | None = None, local: bool = False) -> Any:
    """local=True: Ray Train's local mode (num_workers=0), the loop in this process as one rank."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = (ScalingConfig(num_workers=0) if local else
               ScalingConfig(num_workers=ft.num_workers, use_gpu=ft.use_gpu,
                             resources_per_worker={"CPU": ft.cpus_per_worker}))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=lc,
        torch_config=TorchConfig(backend=dist_backend(ft)),
        scaling_config=scaling,
        run_config=RunConfig(
            name=name, storage_path=str(storage_path),
            # A killed worker restarts the whole worker group, which resumes from the latest checkpoint.
            failure_config=FailureConfig(max_failures=ft.max_failures),
            # Two, so that a crash while the newest is being written still leaves one to resume from.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or []),
    )


def finetune_cell(cfg: StudyConfig, cell: Cell, model_dir: Path, datasets_path: Path, out: Path,
                  tracking_uri: str | None = None, mlflow_run_id: str | None = None,
                  tune_session: bool = False, loop_extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains one cell unless `out` (checkpoints/<hash>) already holds it; returns its manifest.
    loop_extras: added to the workers' loop config (tests: fault_injection)."""
    done = read_manifest(out)
    if done is not None:
        return done | {"reused": True}
    ft = cfg.finetune
    check_trainable(model_dir, cell.model)
    plan = check_data(ft, cell, model_dir, datasets_path)
    log.info("fine-tuning %s: %d optimizer steps on %d worker(s)", cell.id, plan.optimizer_steps, ft.num_workers)

    callbacks = []
    if tune_session:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    lc = loop_config(cfg, cell, model_dir, datasets_path, tracking_uri, mlflow_run_id) | (loop_extras or {})
    storage = Workdir(out.parent.parent).ray_train()  # out is <workdir>/checkpoints/<hash>
    name = f"train-{out.name}"  # deterministic: a rerun after a crash resumes this run's checkpoints
    t0 = time.time()
    result = make_trainer(ft, lc, name, storage, callbacks).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {cell.id} finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        state = ck.read_state(Path(d))
        if not state.get("final"):
            raise RuntimeError(f"training {cell.id} stopped before its final checkpoint: {result.error}")
        with atomic_dir(out) as tmp:
            for sub in (ck.ADAPTER, ck.EXPORT):
                if (Path(d) / sub).exists():
                    shutil.copytree(Path(d) / sub, tmp / sub)
            manifest = write_manifest(tmp, cell=cell.to_dict(), method=ft.method, metrics=state["metrics"],
                                      losses=state["losses"], train_seconds=round(time.time() - t0, 1),
                                      workers=state.get("workers", []))
    # The run's checkpoints (optimizer state, a second copy of the export) were only for resuming.
    shutil.rmtree(storage / name, ignore_errors=True)
    return manifest | {"reused": False}
