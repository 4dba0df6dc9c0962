"""Stage 2, fine-tune one cell: Ray Train TorchTrainer, DeepSpeed ZeRO (gloo + fp32 on CPU, nccl + bf16 on
GPU) and peft LoRA (or full fine-tuning). Writes checkpoints/<train hash>/adapter + manifest.json."""

from __future__ import annotations

import logging
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.storage import atomic_dir, read_manifest, write_manifest
from pipelines.cells import Cell
from pipelines.config import FinetuneConfig, StudyConfig

log = logging.getLogger(__name__)
IGNORE = -100


class FinetuneError(ValueError):
    pass


def deepspeed_config(ft: FinetuneConfig, world_size: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": ft.zero_stage}
    if ft.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": ft.batch_size,
        "gradient_accumulation_steps": ft.grad_accum,
        "train_batch_size": ft.batch_size * ft.grad_accum * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        # A client torch AdamW: DeepSpeed's own optimizer block would JIT-build another op on CPU.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": ft.use_gpu},
        "steps_per_print": 10**9,
    }


def format_example(tok: Any, row: dict[str, Any], max_length: int) -> dict[str, list[int]] | None:
    """The model's own chat template; loss only on the response tokens."""
    user = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
    prompt = [{"role": "user", "content": user}]
    prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full_ids = tok.apply_chat_template([*prompt, {"role": "assistant", "content": row["output"]}],
                                       tokenize=True, return_dict=False)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # Templates that rewrite earlier turns break the prefix property; fall back to concatenation.
        full_ids = prompt_ids + tok(row["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    full_ids = full_ids[:max_length]
    labels = [IGNORE] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids):]
    if all(x == IGNORE for x in labels):
        return None  # the prompt alone fills max_length: nothing to learn from
    return {"input_ids": full_ids, "labels": labels}


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_loop_per_worker(lc: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. DeepSpeed joins the process group Ray Train created."""
    import deepspeed
    import mlflow
    import ray.train
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from pipelines.translate import read_split

    ft = FinetuneConfig.model_validate(lc["finetune"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(lc["seed"])
    random.seed(lc["seed"])
    if not ft.use_gpu:
        torch.set_num_threads(max(1, int(ft.cpus_per_worker)))
    deepspeed.init_distributed(dist_backend="nccl" if ft.use_gpu else "gloo")

    tok = AutoTokenizer.from_pretrained(lc["model_dir"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = read_split(Path(lc["datasets_path"]), "benign", lc["ft_lang"]).to_dicts()
    examples = [e for e in (format_example(tok, r, ft.max_length) for r in rows) if e is not None]
    per_rank = len(examples) // world  # equal shards: every rank must take the same number of steps
    shard = examples[rank * per_rank:(rank + 1) * per_rank]
    steps_per_epoch = math.ceil(per_rank / ft.batch_size)
    total_steps = math.ceil(steps_per_epoch * lc["epochs"] / ft.grad_accum)

    dtype = torch.bfloat16 if ft.use_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(lc["model_dir"], dtype=dtype)
    if ft.method == "lora":
        lora = LoraConfig(r=ft.lora.r, lora_alpha=ft.lora.alpha, lora_dropout=ft.lora.dropout,
                          target_modules=lc["lora_targets"], task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=ft.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(ft.warmup_ratio * total_steps), total_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(ft, world))

    tracker = mlflow.MlflowClient(lc["tracking_uri"]) if rank == 0 and lc.get("mlflow_run_id") else None
    step, losses = 0, []
    engine.train()
    for epoch in range(lc["epochs"]):
        order = list(range(len(shard)))
        random.Random(lc["seed"] * 1000 + epoch).shuffle(order)
        for b in range(steps_per_epoch):
            batch = collate([shard[i] for i in order[b * ft.batch_size:(b + 1) * ft.batch_size]], tok.pad_token_id)
            t0 = time.perf_counter()
            loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
            engine.backward(loss)
            engine.step()
            step += 1
            losses.append(float(loss))
            if tracker is not None:
                tokens = int(batch["attention_mask"].sum()) * world
                tracker.log_batch(lc["mlflow_run_id"], metrics=[
                    mlflow.entities.Metric("train/loss", float(loss), int(time.time() * 1000), step),
                    mlflow.entities.Metric("train/lr", scheduler.get_last_lr()[0], int(time.time() * 1000), step),
                    mlflow.entities.Metric("train/tokens_per_s", tokens / (time.perf_counter() - t0),
                                           int(time.time() * 1000), step),
                ])
    metrics = {"train_loss": sum(losses[-steps_per_epoch:]) / max(1, len(losses[-steps_per_epoch:])),
               "optimizer_steps": engine.global_steps, "micro_steps": step, "examples": per_rank * world}
    # Under ZeRO-2 every rank holds the full (LoRA) weights: rank 0 saves them and reports the checkpoint;
    # every rank must call report.
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            engine.module.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics, checkpoint=None)


def check_trainable(model_dir: Path, alias: str) -> None:
    """Fails before any worker starts when the model cannot be fine-tuned as a chat model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if not tok.chat_template:
        raise FinetuneError(
            f"model '{alias}' has no chat template, so its examples cannot be formatted as chat turns. "
            "Use an instruction-tuned model, or add a chat_template to its tokenizer_config.json."
        )


def finetune_cell(cfg: StudyConfig, cell: Cell, model_dir: Path, datasets_path: Path, out: Path,
                  tracking_uri: str | None = None, mlflow_run_id: str | None = None,
                  tune_session: bool = False) -> dict[str, Any]:
    """Trains one cell unless checkpoints/<hash> already holds its adapter; returns its manifest."""
    done = read_manifest(out)
    if done is not None:
        return done | {"reused": True}
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.registries.models import model_spec

    check_trainable(model_dir, cell.model)
    ft = cfg.finetune
    spec = model_spec(cell.model)
    loop_config = {
        "finetune": ft.model_dump(mode="json"), "model_dir": str(model_dir), "datasets_path": str(datasets_path),
        "ft_lang": cell.ft_lang, "seed": cell.seed, "epochs": cell.epochs,
        "lora_targets": ft.lora.target_modules or list(spec.lora_targets),
        "tracking_uri": tracking_uri, "mlflow_run_id": mlflow_run_id,
    }
    callbacks = []
    if tune_session:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if ft.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=ft.num_workers, use_gpu=ft.use_gpu,
                                     resources_per_worker={"CPU": ft.cpus_per_worker}),
        run_config=RunConfig(name=f"train-{out.name}", storage_path=str(out.parent.parent / "ray_train"),
                             failure_config=FailureConfig(max_failures=ft.max_failures), callbacks=callbacks),
    )
    t0 = time.time()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {cell.id} finished without a checkpoint: {result.error}")
    with atomic_dir(out) as tmp, result.checkpoint.as_directory() as ckpt:
        shutil.copytree(ckpt, tmp / "adapter")
        manifest = write_manifest(tmp, cell=cell.to_dict(), method=ft.method, metrics=dict(result.metrics),
                                  train_seconds=round(time.time() - t0, 1))
    return manifest | {"reused": False}
