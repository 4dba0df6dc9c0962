"""The fine-tuning recipe every Ray Train worker runs (or the caller, in Ray Train's local mode), in the
seams of a recipe: ``setup`` (model, optimizer, data shard, resume state), ``train_step`` (one optimizer
step over the global batch), ``maybe_checkpoint`` (the periodic resumable checkpoint), ``export`` (the final
adapter or full weights, reported to Ray Train with the run's metrics). DeepSpeed joins the process group
Ray Train created (gloo + fp32 on CPU, nccl + bf16 on GPU)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import progress
from cluster.connect import placement
from pipelines.config import FinetuneConfig
from pipelines.finetune import checkpoints as ck
from pipelines.finetune.data import (
    FORWARD_KWARGS,
    StepPlan,
    build_sequences,
    collate,
    load_tokenizer,
    micro_batch,
    plan_steps,
    real_tokens,
)
from pipelines.finetune.deepspeed_config import deepspeed_config, dist_backend, on_gpu
from pipelines.finetune.metrics import MetricLogger, StepStats, gpu_peak_flops, mfu
from pipelines.translate import read_split

log = logging.getLogger(__name__)



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
    """Runs on every Ray Train worker (or in the caller, in Ray Train's local mode)."""
    import torch

    threads = torch.get_num_threads()
    set_env: list[bool] = []
    try:
        _train({**lc, "_loop_started": time.time()}, set_env)
    finally:
        # Local mode shares the caller's process: give back its threads, and drop the one-rank
        # environment so the next local run gets a fresh port rather than Ray's torchrun path.
        torch.set_num_threads(threads)
        if any(set_env):
            for key in _LOCAL_ENV:
                os.environ.pop(key, None)


@dataclass
class Run:
    """What one worker trains with, built by setup()."""

    ft: FinetuneConfig
    lc: dict[str, Any]
    rank: int
    world: int
    seed: int
    tok: Any
    shard: list[Any]
    plan: StepPlan
    engine: Any
    facts: dict[str, float]
    logger: MetricLogger
    dtype: Any
    peak: float | None
    state: dict[str, Any] = field(default_factory=lambda: {"step": 0, "losses": [], "final": False})
    resumed_from: int = -1
    stats: StepStats = field(default_factory=StepStats)
    t_start: float = field(default_factory=time.time)


def benign_rows(datasets_path: Path, lang: str) -> list[dict[str, Any]]:
    return read_split(datasets_path, "benign", lang).to_dicts()


def _train(lc: dict[str, Any], set_env: list[bool]) -> None:
    ft = FinetuneConfig.model_validate(lc["finetune"])
    restore = _restore_point(lc)
    if restore is not None and _finished(restore):
        return  # restarted after the final report: the run's result is already that checkpoint
    _prepare_process(ft, lc, set_env)  # before zero.Init, which reads the rank environment
    ds_config = deepspeed_config(ft, _world())
    with _zero3_model_init(ds_config):
        run = setup(ft, lc, ds_config, restore)
        fault = lc.get("fault_injection")
        for step in range(int(run.state["step"]), run.plan.optimizer_steps):
            train_step(run, step)
            if run.rank == 0:
                with progress.for_cell(lc.get("progress"), lc.get("cell_id", "")):
                    progress.update("finetune step", run.state["step"], run.plan.optimizer_steps)
            maybe_checkpoint(run)
            if _fault_injection(fault, run.state["step"], run.resumed_from >= 0, run.rank):
                run.logger.close()
                return
        final_weights = (ck.trainable_state(run.engine.module, run.rank) if ft.method == "lora"
                         else ck.full_state(run.engine, run.rank))
        optimizer_steps = int(run.engine.global_steps)
    run.logger.close()
    export(run, final_weights, optimizer_steps)


def _world() -> int:
    import ray.train

    return ray.train.get_context().get_world_size()


def _restore_point(lc: dict[str, Any]) -> Any:
    import ray.train

    restore = ray.train.get_checkpoint()
    if restore is None and lc.get("resume_from"):
        restore = ray.train.Checkpoint.from_directory(lc["resume_from"])
    return restore


def _finished(restore: Any) -> bool:
    with restore.as_directory() as d:
        return bool(ck.read_state(Path(d)).get("final"))


def _prepare_process(ft: FinetuneConfig, lc: dict[str, Any], set_env: list[bool]) -> None:
    """Seeds, threads and the process group, before any model is built."""
    import torch
    from transformers import set_seed

    set_seed(int(lc["seed"]))  # python, numpy, torch: LoRA initialisation and dropout are part of the cell
    if not on_gpu(ft):
        torch.set_num_threads(max(1, int(ft.cpus_per_worker)))
    set_env.append(_init_distributed(ft))


def setup(ft: FinetuneConfig, lc: dict[str, Any], ds_config: dict[str, Any], restore: Any) -> Run:
    """This rank's data shard, the model (partitioned under ZeRO-3) with its LoRA adapter, the optimizer
    and schedule inside DeepSpeed, and the resume state when restarting."""
    import deepspeed
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed, epochs = int(lc["seed"]), int(lc["epochs"])

    tok = load_tokenizer(lc["model_dir"])
    seqs = build_sequences(tok, benign_rows(Path(lc["datasets_path"]), lc["ft_lang"]), ft)
    plan = plan_steps(len(seqs), world, ft, epochs)
    shard = seqs[rank * plan.per_rank:(rank + 1) * plan.per_rank]
    dtype = torch.bfloat16 if on_gpu(ft) else torch.float32
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
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    logger = MetricLogger(lc.get("tracking_uri"), lc.get("mlflow_run_id")) if rank == 0 else MetricLogger(None, None)
    run = Run(ft, lc, rank, world, seed, tok, shard, plan, engine, facts, logger, dtype, gpu_peak_flops(on_gpu(ft)))
    if restore is not None:
        with restore.as_directory() as d:
            run.state = ck.load_resume_state(engine, Path(d), rank)
        run.resumed_from = int(run.state["step"])
        log.info("rank %d resumed at optimizer step %d of %d", rank, run.resumed_from, plan.optimizer_steps)
    engine.train()
    return run


def train_step(run: Run, step: int) -> float:
    """One optimizer step (grad_accum micro-batches); logs loss, lr, tokens/s (and MFU on GPU)."""
    import torch

    ft, engine = run.ft, run.engine
    batches = [micro_batch(run.shard, run.plan, ft.batch_size, run.seed, step * ft.grad_accum + i)
               for i in range(ft.grad_accum)]
    tensors = [{k: v.to(engine.device) for k, v in collate(b, run.tok.pad_token_id).items()} for b in batches]
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
    step_loss, tokens = float(agg[0]) / run.world, int(agg[1])
    run.stats.add(seconds, tokens)
    run.state["losses"].append(step_loss)
    run.state["step"] = step + 1
    values = {"train/loss": step_loss, "train/lr": lr, "train/tokens_per_s": tokens / seconds}
    if run.peak:
        values["train/mfu"] = mfu(int(run.facts["model_params"]), tokens, seconds, run.peak, run.world)
    run.logger.log(step + 1, values)
    return step_loss


def maybe_checkpoint(run: Run) -> None:
    """Every finetune.checkpoint_every_steps steps (but not at the last one, which export() saves): the
    DeepSpeed state, RNG and step of every rank, plus the adapter so far, reported to Ray Train."""
    every, step = run.ft.checkpoint_every_steps, run.state["step"]
    if not every or step % every or step >= run.plan.optimizer_steps:
        return
    staging = _staging_dir()
    ck.save_resume_state(run.engine, staging, run.rank, run.state)
    if run.ft.method == "lora":
        weights = ck.trainable_state(run.engine.module, run.rank)
        if run.rank == 0:
            ck.save_adapter(run.engine.module, weights, run.tok, staging / ck.ADAPTER)
    _report({"step": step, "loss": run.state["losses"][-1]}, staging)


def _gather_placement(run: Run) -> list[dict[str, Any]]:
    """Where every rank trained: its node and the GPU ids Ray gave it (logical ones on a cluster that only
    advertises GPUs), whether torch computed on a GPU, and when it started and finished, for the cell's
    record (and the simulated-cluster test that no two GPU holders shared a GPU)."""
    import torch.distributed as dist

    mine = placement() | {"rank": run.rank, "on_gpu": on_gpu(run.ft),
                          "started": run.lc.get("_loop_started", run.t_start), "finished": time.time()}
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def export(run: Run, final_weights: Any, optimizer_steps: int) -> None:
    """The run's metrics from every rank; rank 0 also writes the final adapter (and a merged export when
    asked) or the full fine-tuned weights, as the checkpoint of the last report."""
    ft, state, plan = run.ft, run.state, run.plan
    last_epoch = state["losses"][-max(1, plan.micro_per_epoch // ft.grad_accum):]
    metrics = {
        "train_loss": sum(last_epoch) / len(last_epoch), "final_step_loss": state["losses"][-1],
        "optimizer_steps": optimizer_steps, "micro_steps": optimizer_steps * ft.grad_accum,
        # Sequences trained on per epoch, all ranks (examples, or packs of them under finetune.packing).
        "planned_optimizer_steps": plan.optimizer_steps, "sequences": plan.per_rank * run.world,
        "resumed_from_step": run.resumed_from,
        "train_seconds": round(time.time() - run.t_start, 2), **run.stats.summary(), **run.facts,
    }
    workers = _gather_placement(run)  # a collective: every rank takes part
    if run.rank != 0:
        _report(metrics, None)  # every rank reports; only rank 0 carries the checkpoint
        return
    staging = _staging_dir()
    ck.write_state(staging, {**state, "final": True, "metrics": metrics, "workers": workers})
    model_dir = Path(run.lc["model_dir"])
    if ft.method == "lora":
        ck.save_adapter(run.engine.module, final_weights, run.tok, staging / ck.ADAPTER)
        if ft.export_merged:
            ck.export_merged(model_dir, staging / ck.ADAPTER, run.tok, staging / ck.EXPORT, run.dtype)
    else:
        ck.export_full(model_dir, final_weights, run.tok, staging / ck.EXPORT, run.dtype)
    _report(metrics, staging)
