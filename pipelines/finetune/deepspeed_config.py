"""DeepSpeed configs for a cell: ZeRO stage 2 or 3; gloo + fp32 on CPU, nccl + bf16 on GPU. Every value
is concrete (no "auto"): transformers' HfDeepSpeedConfig reads the same dict to build the model under
deepspeed.zero.Init for ZeRO-3."""

from __future__ import annotations

from typing import Any

from pipelines.config import FinetuneConfig


def deepspeed_config(ft: FinetuneConfig, world_size: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": ft.zero_stage}
    if ft.zero_stage == 3:
        # Final weights are gathered on rank 0 by engine.save_16bit_model (every rank calls it).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": ft.batch_size,
        "gradient_accumulation_steps": ft.grad_accum,
        "train_batch_size": ft.batch_size * ft.grad_accum * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        # A client torch AdamW: DeepSpeed's own optimizer block would JIT-build another op on CPU.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": on_gpu(ft)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def dist_backend(ft: FinetuneConfig) -> str:
    if ft.dist_backend != "auto":
        return ft.dist_backend
    return "nccl" if ft.use_gpu else "gloo"


def on_gpu(ft: FinetuneConfig) -> bool:
    """Whether this worker computes on a GPU: it reserved one (use_gpu) and torch sees a device. A logical
    GPU torch cannot see (a local cluster that advertises GPUs) reserves without computing: CPU, fp32."""
    import torch

    return ft.use_gpu and torch.cuda.is_available()
