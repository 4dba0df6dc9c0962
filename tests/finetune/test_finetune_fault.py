"""A training worker killed mid-epoch, for real: two Ray Train workers (DeepSpeed ZeRO-3 + LoRA, gloo)
train the smoke study's English cell with a checkpoint every step; after the step-2 checkpoint this test
SIGKILLs rank 1's process from outside. Ray Train (FailureConfig) restarts the worker group, the loop
restores weights, optimizer, scheduler, step and RNG from ray.train.get_checkpoint(), and the cell must
end where the smoke study's uninterrupted (ZeRO-2) run of the same cell ended. One real fit covers the
multi-worker paths: worker kill and resume, ZeRO-3 across ranks, and the exported directories."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from finetune_support import safetensors_dict

from cluster.storage import read_manifest
from pipelines.cells import Cell, train_hash
from pipelines.finetune import checkpoints as ck
from pipelines.finetune import finetune_cell
from pipelines.registries.model_store import model_dir

pytestmark = pytest.mark.e2e

KILL_AFTER_STEP = 2


def _latest_reported_step(snapshot: Path) -> int | None:
    """The step of the newest checkpoint Ray Train's controller has registered (its own snapshot file):
    killing before that would lose the checkpoint the test means to resume from."""
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return None
    return (latest.get("metrics") or {}).get("step")


class Killer(threading.Thread):
    def __init__(self, pid_file: Path, snapshot: Path, timeout_s: float = 300) -> None:
        super().__init__(daemon=True)
        self.pid_file, self.snapshot, self.timeout_s = pid_file, snapshot, timeout_s
        self.killed_pid: int | None = None

    def run(self) -> None:
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            if self.pid_file.exists() and _latest_reported_step(self.snapshot) == KILL_AFTER_STEP:
                pid = int(self.pid_file.read_text())
                os.kill(pid, signal.SIGKILL)
                self.killed_pid = pid
                return
            time.sleep(0.2)


def test_killed_worker_resumes_and_matches_the_uninterrupted_cell(smoke_study, require_tool, tmp_path: Path) -> None:
    require_tool("apertium")  # the smoke study translates with it
    res, cfg0 = smoke_study["result"], smoke_study["cfg"]
    cell = Cell("tiny-llama", "en", 0, 1)
    ds_hash = res.datasets_path.name
    reference = res.workdir / "checkpoints" / train_hash(cfg0, cell, ds_hash)
    ref = read_manifest(reference)
    assert ref is not None and ref["metrics"]["resumed_from_step"] == -1  # the smoke run was not interrupted

    # The same cell with a checkpoint every step, and under ZeRO-3: the model built partitioned across the
    # two workers, DeepSpeed's partitioned state saved and restored, the adapter gathered on rank 0.
    cadence = cfg0.model_copy(update={"finetune": cfg0.finetune.model_copy(update={"checkpoint_every_steps": 1})})
    assert train_hash(cadence, cell, ds_hash) == reference.name  # the cadence does not change what is learned
    cfg = cadence.model_copy(update={"finetune": cadence.finetune.model_copy(update={"zero_stage": 3})})
    out = tmp_path / "checkpoints" / train_hash(cfg, cell, ds_hash)
    pid_dir = tmp_path / "pids"
    killer = Killer(pid_dir / "rank1.pid",
                    tmp_path / "ray_train" / f"train-{out.name}" / "checkpoint_manager_snapshot.json")
    killer.start()
    fault = {"after_step": KILL_AFTER_STEP, "action": "pause", "pid_dir": str(pid_dir), "timeout_s": 240}
    manifest = finetune_cell(cfg, cell, model_dir("tiny-llama"), res.datasets_path, out,
                             loop_extras={"fault_injection": fault})
    killer.join(timeout=1)

    assert killer.killed_pid is not None, "the worker never reached the kill point"
    m, r = manifest["metrics"], ref["metrics"]
    assert m["resumed_from_step"] == KILL_AFTER_STEP  # the restarted group resumed, it did not start over
    assert m["optimizer_steps"] == r["optimizer_steps"] == 3  # 24 examples / 2 workers / batch 4
    assert m["zero3_init"] == 1.0 and m["rank0_param_fraction"] < 0.6  # rank 0 never held the whole model
    # ZeRO-2 and ZeRO-3 sum gradients in different orders, so equal up to float32 rounding (measured
    # 1e-7 on one rank); a restore that lost the optimizer or scheduler state would be off by far more.
    assert manifest["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    mine = safetensors_dict(out / ck.ADAPTER / "adapter_model.safetensors")
    theirs = safetensors_dict(reference / ck.ADAPTER / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], rtol=1e-4, atol=1e-6)
    # The finished cell: the adapter loads with peft, the merged export with plain transformers.
    from peft import PeftConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert PeftConfig.from_pretrained(out / ck.ADAPTER).r == cfg.finetune.lora.r
    tok = AutoTokenizer.from_pretrained(out / ck.EXPORT)
    model = AutoModelForCausalLM.from_pretrained(out / ck.EXPORT)
    enc = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert model.generate(**enc, max_new_tokens=1, do_sample=False).shape[1] == enc["input_ids"].shape[1] + 1
    assert not (tmp_path / "ray_train" / f"train-{out.name}").exists()  # resume-only state cleaned up
