"""Stage 2, fine-tune one cell: Ray Train TorchTrainer, DeepSpeed ZeRO-2/3 (gloo + fp32 on CPU, nccl + bf16
on GPU), peft LoRA or full fine-tuning. Resumable checkpoints every finetune.checkpoint_every_steps steps
through ray.train.report, so a killed worker resumes (FailureConfig) instead of restarting the cell.
Writes checkpoints/<train hash>/{adapter,export} + manifest.json (layout: pipelines/checkpoints.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster.storage import atomic_dir, read_manifest, write_manifest
from pipelines import checkpoints as ck
from pipelines.cells import Cell
from pipelines.config import FinetuneConfig, StudyConfig
from pipelines.deepspeed_config import deepspeed_config, dist_backend
from pipelines.finetune_data import (
    FORWARD_KWARGS,
    IGNORE,
    FinetuneError,
    StepPlan,
    build_sequences,
    collate,
    format_example,
    micro_batch,
    plan_steps,
    real_tokens,
)

__all__ = ["IGNORE", "FinetuneError", "check_data", "check_trainable", "collate", "deepspeed_config",
           "finetune_cell", "format_example", "make_trainer", "train_loop_per_worker"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- checks before any worker starts

def check_trainable(model_dir: Path, alias: str) -> None:
    """Fails before any worker starts when the model cannot be fine-tuned as a chat model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if not tok.chat_template:
        raise FinetuneError(
            f"model '{alias}' has no chat template, so its examples cannot be formatted as chat turns. "
            "Use an instruction-tuned model, or add a chat_template to its tokenizer_config.json."
        )


def _load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _benign_rows(datasets_path: Path, lang: str) -> list[dict[str, Any]]:
    from pipelines.translate import read_split

    return read_split(datasets_path, "benign", lang).to_dicts()


def check_data(ft: FinetuneConfig, cell: Cell, model_dir: Path, datasets_path: Path) -> StepPlan:
    """The cell's training set, as the workers will see it, must make at least one optimizer step on
    every worker: fail here, naming the setting to change, rather than inside Ray Train."""
    rows = _benign_rows(datasets_path, cell.ft_lang)
    if not rows:
        from pipelines.translate import read_split

        before = read_split(datasets_path, "benign", cell.ft_lang, qa_filter=False).height
        policy = (read_manifest(datasets_path) or {}).get("qa_policy") or {}
        raise FinetuneError(
            f"the benign fine-tuning set for '{cell.ft_lang}' has no rows after QA filtering ({before} before; "
            f"policy {policy}). Loosen translate.qa (drop fewer translate.qa.drop_flags, "
            "require_lang_id=false, a lower or null min_chrf) or increase data.benign.n")
    tok = _load_tokenizer(model_dir)
    seqs = build_sequences(tok, rows, ft)
    if not seqs:
        raise FinetuneError(
            f"none of the {len(rows)} '{cell.ft_lang}' examples leaves a response token within "
            f"finetune.max_length={ft.max_length}: increase finetune.max_length")
    return plan_steps(len(seqs), ft.num_workers, ft, cell.epochs)


# ---------------------------------------------------------------- the training loop (every worker)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LOCAL_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _init_distributed(ft: FinetuneConfig) -> bool:
    """Returns True when it set the one-rank environment (for the caller to remove again)."""
    import deepspeed
    import torch.distributed as dist

    set_env = not dist.is_initialized()
    if set_env:
        # Ray Train's local mode (num_workers=0: unit tests, benchmarks) runs this loop in the calling
        # process with no process group; DeepSpeed needs one, of one rank, on a free port.
        os.environ.update(dict(zip(_LOCAL_ENV, ["0", "0", "1", "1", "127.0.0.1", str(_free_port())], strict=True)))
        _forget_deepspeed_groups()
    # Under Ray Train the process group exists already; DeepSpeed adopts it.
    deepspeed.init_distributed(dist_backend=dist_backend(ft), verbose=False)
    return set_env


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches process groups in module globals; local mode destroys the process group after
    each run, so a second local run in the same process would broadcast over a dead group. Only called
    when no process group exists, so nothing live is dropped."""
    from deepspeed.utils import groups

    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP", "_MODEL_PARALLEL_GROUP",
                 "_TENSOR_MODEL_PARALLEL_GROUP", "mesh_device", "mpu"):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        getattr(groups, name, {}).clear()


@contextlib.contextmanager
def _zero3_model_init(ds_config: dict[str, Any]) -> Iterator[None]:
    """Under ZeRO-3, transformers builds every model loaded inside this scope under deepspeed.zero.Init,
    so each rank materialises only its own partition of the weights instead of the full model.
    transformers keeps only a weak reference to the HfDeepSpeedConfig: it is held here, then unset, so
    the exports after training load plain models."""
    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        del keep_alive
        unset_hf_deepspeed_config()


def _partition_facts(model: Any) -> dict[str, float]:
    """How much of the model this rank holds right after loading: 1.0 normally, about 1/world under
    ZeRO-3, where the weights were created partitioned."""
    params = list(model.parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    return {"model_params": float(full), "zero3_init": float(all(hasattr(p, "ds_id") for p in params)),
            "rank0_param_fraction": local / max(1, full)}


def _report(metrics: dict[str, Any], directory: Path | None) -> None:
    import ray.train

    ckpt = ray.train.Checkpoint.from_directory(str(directory)) if directory is not None else None
    # The staging directory is removed once Ray Train has copied it to storage (local mode keeps it:
    # there the checkpoint is never copied).
    ray.train.report(metrics, checkpoint=ckpt, delete_local_checkpoint_after_upload=directory is not None)


def _staging_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="safedrift-ckpt-"))


def _fault_injection(fault: dict[str, Any] | None, step: int, resumed: bool, rank: int) -> bool:
    """Test hook (train_loop_config["fault_injection"]): after the checkpoint of step `after_step` of a
    run that did not resume, "pause" writes this worker's PID and waits to be killed from outside (the
    worker-kill test); "stop" ends the loop there (a crash after a checkpoint, in-process). Returns True
    when the loop must stop."""
    if not fault or resumed or step != fault["after_step"]:
        return False
    if fault["action"] == "stop":
        return True
    pid_dir = Path(fault["pid_dir"])
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    deadline = time.time() + float(fault.get("timeout_s", 120))
    while time.time() < deadline:  # if nobody kills us, carry on: the test then fails on resumed_from_step
        time.sleep(0.2)
    return False


def train_loop_per_worker(lc: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (or in the caller, in Ray Train's local mode). DeepSpeed joins the
    process group Ray Train created."""
    import torch

    threads = torch.get_num_threads()
    set_env: list[bool] = []
    try:
        _train(lc, set_env)
    finally:
        # Local mode shares the caller's process: give back its threads, and drop the one-rank
        # environment so the next local run gets a fresh port rather than Ray's torchrun path.
        torch.set_num_threads(threads)
        if any(set_env):
            for key in _LOCAL_ENV:
                os.environ.pop(key, None)


def _train(lc: dict[str, Any], set_env: list[bool]) -> None:
    import deepspeed
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup, set_seed

    from pipelines.train_metrics import MetricLogger, StepStats, gpu_peak_flops, mfu

    ft = FinetuneConfig.model_validate(lc["finetune"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed, epochs = int(lc["seed"]), int(lc["epochs"])
    set_seed(seed)  # python, numpy, torch: LoRA initialisation and dropout are part of the cell
    if not ft.use_gpu:
        torch.set_num_threads(max(1, int(ft.cpus_per_worker)))
    set_env.append(_init_distributed(ft))

    tok = _load_tokenizer(lc["model_dir"])
    seqs = build_sequences(tok, _benign_rows(Path(lc["datasets_path"]), lc["ft_lang"]), ft)
    plan = plan_steps(len(seqs), world, ft, epochs)
    shard = seqs[rank * plan.per_rank:(rank + 1) * plan.per_rank]
    dtype = torch.bfloat16 if ft.use_gpu else torch.float32
    ds_config = deepspeed_config(ft, world)

    restore = ray.train.get_checkpoint()
    if restore is None and lc.get("resume_from"):
        restore = ray.train.Checkpoint.from_directory(lc["resume_from"])
    if restore is not None:
        with restore.as_directory() as d:
            if ck.read_state(Path(d)).get("final"):
                return  # restarted after the final report: the run's result is already that checkpoint

    peak = gpu_peak_flops(ft.use_gpu)
    logger = MetricLogger(lc.get("tracking_uri"), lc.get("mlflow_run_id")) if rank == 0 else MetricLogger(None, None)
    stats = StepStats()
    state: dict[str, Any] = {"step": 0, "losses": [], "final": False}
    resumed_from = -1
    t_start = time.time()
    with _zero3_model_init(ds_config):
        model = AutoModelForCausalLM.from_pretrained(lc["model_dir"], dtype=dtype)
        facts = _partition_facts(model)
        if ft.method == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=ft.lora.r, lora_alpha=ft.lora.alpha, lora_dropout=ft.lora.dropout,
                              target_modules=lc["lora_targets"], task_type="CAUSAL_LM")
            model = get_peft_model(model, lora)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=ft.lr, weight_decay=0.0)
        warmup = int(ft.warmup_ratio * plan.optimizer_steps)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, plan.optimizer_steps)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
        if restore is not None:
            with restore.as_directory() as d:
                state = ck.load_resume_state(engine, Path(d), rank)
            resumed_from = int(state["step"])
            log.info("rank %d resumed at optimizer step %d of %d", rank, resumed_from, plan.optimizer_steps)

        engine.train()
        fault = lc.get("fault_injection")
        for step in range(int(state["step"]), plan.optimizer_steps):
            batches = [micro_batch(shard, plan, ft.batch_size, seed, step * ft.grad_accum + i)
                       for i in range(ft.grad_accum)]
            tensors = [{k: v.to(engine.device) for k, v in collate(b, tok.pad_token_id).items()} for b in batches]
            lr = engine.get_lr()[0]  # the rate this step applies (the scheduler moves after it)
            t0 = time.perf_counter()
            loss_sum = 0.0
            for batch in tensors:
                loss = engine(**batch, **FORWARD_KWARGS).loss
                engine.backward(loss)
                engine.step()
                loss_sum += float(loss.detach())
            # One all-reduce per optimizer step: the loss over the global batch and its real tokens.
            agg = torch.tensor([loss_sum / ft.grad_accum, float(sum(real_tokens(b) for b in batches))],
                               dtype=torch.float64, device=engine.device)
            torch.distributed.all_reduce(agg)
            seconds = time.perf_counter() - t0
            step_loss, tokens = float(agg[0]) / world, int(agg[1])
            stats.add(seconds, tokens)
            state["losses"].append(step_loss)
            state["step"] = step + 1
            values = {"train/loss": step_loss, "train/lr": lr, "train/tokens_per_s": tokens / seconds}
            if peak:
                values["train/mfu"] = mfu(int(facts["model_params"]), tokens, seconds, peak, world)
            logger.log(step + 1, values)

            every = ft.checkpoint_every_steps
            if every and state["step"] % every == 0 and state["step"] < plan.optimizer_steps:
                staging = _staging_dir()
                ck.save_resume_state(engine, staging, rank, state)
                if ft.method == "lora":
                    weights = ck.trainable_state(engine.module, rank)
                    if rank == 0:
                        ck.save_adapter(engine.module, weights, tok, staging / ck.ADAPTER)
                _report({"step": state["step"], "loss": step_loss}, staging)
            if _fault_injection(fault, state["step"], resumed_from >= 0, rank):
                logger.close()
                return

        final_weights = (ck.trainable_state(engine.module, rank) if ft.method == "lora"
                         else ck.full_state(engine, rank))
        optimizer_steps = int(engine.global_steps)
    logger.close()

    last_epoch = state["losses"][-max(1, plan.micro_per_epoch // ft.grad_accum):]
    metrics = {
        "train_loss": sum(last_epoch) / len(last_epoch), "final_step_loss": state["losses"][-1],
        "optimizer_steps": optimizer_steps, "micro_steps": optimizer_steps * ft.grad_accum,
        # Sequences trained on per epoch, all ranks (examples, or packs of them under finetune.packing).
        "planned_optimizer_steps": plan.optimizer_steps, "sequences": plan.per_rank * world,
        "resumed_from_step": resumed_from,
        "train_seconds": round(time.time() - t_start, 2), **stats.summary(), **facts,
    }
    if rank != 0:
        _report(metrics, None)  # every rank reports; only rank 0 carries the checkpoint
        return
    staging = _staging_dir()
    ck.write_state(staging, {**state, "final": True, "metrics": metrics})
    model_dir = Path(lc["model_dir"])
    if ft.method == "lora":
        ck.save_adapter(engine.module, final_weights, tok, staging / ck.ADAPTER)
        if ft.export_merged:
            ck.export_merged(model_dir, staging / ck.ADAPTER, tok, staging / ck.EXPORT, dtype)
    else:
        ck.export_full(model_dir, final_weights, tok, staging / ck.EXPORT, dtype)
    _report(metrics, staging)


# ---------------------------------------------------------------- the driver

def loop_config(cfg: StudyConfig, cell: Cell, model_dir: Path, datasets_path: Path,
                tracking_uri: str | None = None, mlflow_run_id: str | None = None) -> dict[str, Any]:
    from pipelines.registries.models import model_spec

    ft = cfg.finetune
    return {
        "finetune": ft.model_dump(mode="json"), "model_dir": str(model_dir), "datasets_path": str(datasets_path),
        "ft_lang": cell.ft_lang, "seed": cell.seed, "epochs": cell.epochs,
        "lora_targets": ft.lora.target_modules or list(model_spec(cell.model).lora_targets),
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
    storage = out.parent.parent / "ray_train"
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
                                      losses=state["losses"], train_seconds=round(time.time() - t0, 1))
    # The run's checkpoints (optimizer state, a second copy of the export) were only for resuming.
    shutil.rmtree(storage / name, ignore_errors=True)
    return manifest | {"reused": False}
