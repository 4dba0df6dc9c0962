"""Per-step training numbers: loss, learning rate, tokens/s and (on a known GPU) MFU, logged to the
cell's MLflow run without blocking the step; steady-state step time for the benchmarks."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

# Dense bf16 peak FLOP/s per GPU, from the vendors' data sheets. Most specific names first: a name is
# matched by substring of torch.cuda.get_device_name(). Unknown GPUs get no MFU rather than a guess.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def mfu(n_params: int, tokens: int, seconds: float, peak_per_device: float, world: int) -> float:
    """Model FLOPs utilisation by the usual 6·N FLOPs per token (forward 2N, backward 4N), over all
    devices. LoRA skips most weight gradients, so this overstates LoRA's real work (about 4N): it is the
    convention the field compares by, labelled as such."""
    return 6.0 * n_params * tokens / (seconds * peak_per_device * world)


def gpu_peak_flops(use_gpu: bool) -> float | None:
    if not use_gpu:
        return None  # MFU is a GPU measure: a CPU's peak is neither well defined nor comparable
    import torch

    return peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


@dataclass
class StepStats:
    """Optimizer-step wall times (forward, backward and step over grad_accum micro-batches; not data
    preparation or checkpointing) and the real (non-padding) tokens each step trained on, all ranks."""

    warmup: int = 2  # first steps pay one-off costs (allocations, DeepSpeed's first hooks)
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds.append(seconds)
        self.tokens.append(tokens)

    def steady(self) -> tuple[list[float], list[int]]:
        skip = min(self.warmup, max(0, len(self.seconds) - 1))
        return self.seconds[skip:], self.tokens[skip:]

    def summary(self) -> dict[str, float]:
        secs, toks = self.steady()
        if not secs:
            return {}
        return {"step_time_s": statistics.median(secs), "tokens_per_s": sum(toks) / sum(secs),
                "timed_steps": float(len(secs))}


class MetricLogger:
    """Rank 0's per-step metrics to the cell's MLflow run, asynchronously: a slow tracking server (or
    sqlite lock) must not stretch the training step."""

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self._client = None
        self._run_id = run_id
        self._pending: list[Any] = []
        if tracking_uri and run_id:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri)

    def log(self, step: int, values: dict[str, float]) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        op = self._client.log_batch(self._run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()],
                                    synchronous=False)
        if op is not None:
            self._pending.append(op)

    def close(self) -> None:
        for op in self._pending:
            op.wait()
        self._pending.clear()
