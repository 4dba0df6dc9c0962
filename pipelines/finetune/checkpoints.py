"""What a cell's checkpoints hold, and how a training worker writes and restores them.

A resumable checkpoint, every finetune.checkpoint_every_steps optimizer steps (each rank reports its own
directory; Ray Train merges them into one checkpoint directory, so file names differ by rank):
  train_state.json   step, per-step losses so far, final=false                          (rank 0)
  deepspeed/state/   DeepSpeed engine state: trainable weights, optimizer, LR scheduler, (every rank:
                     one ZeRO shard file per rank)                                        own shard)
  rng/rank_<r>.pt    the rank's RNG states (dropout), so a resumed run matches an         (every rank)
                     uninterrupted one exactly: plain tensors, ints and floats only, read
                     back with torch.load(weights_only=True), so no code runs on load
  adapter/           (LoRA) the adapter so far, gathered on rank 0, usable without DeepSpeed (rank 0)
The final checkpoint (rank 0 only):
  train_state.json   final=true and the run's metrics
  adapter/           (LoRA) peft adapter (adapter_config.json, adapter_model.safetensors) + tokenizer
  export/            the base model with the adapter merged (LoRA, finetune.export_merged) or the fully
                     fine-tuned model, + tokenizer: a plain Hugging Face directory

Nothing read back from a checkpoint (a shared volume others can write to) is an arbitrary pickle: the RNG
file holds tensors and numbers only, and DeepSpeed's own files, which it loads with
``torch.load(weights_only=False)``, are loaded with torch's weights-only unpickler forced on. A checkpoint
whose RNG file is a pickle (written before this format) is not resumed from: the cell starts again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.finetune.data import FinetuneError

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
DS_DIR = "deepspeed"
DS_TAG = "state"
RNG_DIR = "rng"
ADAPTER = "adapter"
EXPORT = "export"
RNG_FORMAT = 2  # 1 (unversioned) was a pickle of Python/numpy objects: never loaded


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.exists():
        raise FinetuneError(f"checkpoint {directory} has no {STATE_FILE}: not written by safedrift's fine-tuning")
    return json.loads(path.read_text())


def fresh_state() -> dict[str, Any]:
    """The training state of a run that has not taken a step (the recipe's Run starts from the same)."""
    return {"step": 0, "losses": [], "final": False}


def write_state(directory: Path, state: dict[str, Any]) -> None:
    (directory / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))


def _rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and numbers (what the weights-only unpickler accepts)."""
    import numpy as np
    import torch

    py_version, py_key, py_gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "format": RNG_FORMAT,
        "python": {"version": int(py_version), "key": torch.tensor(py_key, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": str(np_name), "key": torch.from_numpy(np.asarray(np_key, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["key"].tolist()), py["gauss"]))
    np.random.set_state((npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_rng_state(path: Path) -> dict[str, Any] | None:
    """The RNG states saved at `path`, or None when the file is not in this format (an older pickle, or
    anything else): it is read by the weights-only unpickler, which builds tensors and plain values and
    refuses every other global, so a planted pickle runs nothing."""
    import pickle

    import torch

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        log.warning("%s is not a weights-only RNG state (%s): not loaded", path, type(exc).__name__)
        return None
    if not isinstance(state, dict) or state.get("format") != RNG_FORMAT:
        log.warning("%s holds no RNG state of format %d: not loaded", path, RNG_FORMAT)
        return None
    return state


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """torch.load with the weights-only unpickler even where the caller asks for full unpickling:
    DeepSpeed loads its checkpoint files with weights_only=False; torch reads this variable per call."""
    import torch

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def _deepspeed_safe_globals() -> list[Any]:
    """The plain classes DeepSpeed's checkpoint files name besides tensors: records rebuilt from their
    attributes (the weights-only unpickler calls no constructor and no other function)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def save_resume_state(engine: Any, directory: Path, rank: int, state: dict[str, Any]) -> None:
    """Every rank must call this (DeepSpeed synchronises the ranks while saving)."""
    import torch

    # Frozen base weights are not saved: a resumed run loads them from the model directory again.
    engine.save_checkpoint(str(directory / DS_DIR), tag=DS_TAG, exclude_frozen_parameters=True)
    (directory / RNG_DIR).mkdir(exist_ok=True)
    torch.save(_rng_state(), directory / RNG_DIR / f"rank_{rank}.pt")
    if rank == 0:
        write_state(directory, state)


def load_resume_state(engine: Any, directory: Path, rank: int) -> dict[str, Any]:
    """Restores weights, optimizer, scheduler, DeepSpeed's step counters and this rank's RNG; returns
    the training state (step, losses). Every rank must call this. A checkpoint whose RNG file is not in
    this format (written by an older safedrift as a pickle) is ignored, engine untouched: the run starts
    from step 0, as it would without a checkpoint, rather than unpickling it."""
    rng = directory / RNG_DIR / f"rank_{rank}.pt"
    if not rng.exists():
        raise FinetuneError(f"checkpoint {directory} has no state for rank {rank}: it was written by a "
                            "different number of workers; resume with the same finetune.num_workers")
    state = read_state(directory)
    rng_state = read_rng_state(rng)
    if rng_state is None:
        log.warning("checkpoint %s was written in an older format that is not loaded (pickle): rank %d "
                    "starts the cell again from step 0", directory, rank)
        return fresh_state()
    # Frozen weights were left out of the checkpoint, so the module load is not strict.
    with _weights_only_loads():
        load_path, _ = engine.load_checkpoint(str(directory / DS_DIR), tag=DS_TAG, load_module_strict=False)
    if load_path is None:
        raise FinetuneError(f"DeepSpeed found no checkpoint under {directory / DS_DIR}")
    _set_rng_state(rng_state)
    return state


def trainable_state(model: Any, rank: int) -> dict[str, Any] | None:
    """The trainable (LoRA) weights, gathered on rank 0. Under ZeRO-3 only these small tensors are
    gathered, not the whole model; elsewhere GatheredParameters is a no-op. Every rank must call this."""
    import deepspeed

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        return {n: p.detach().cpu().clone() for n, p in named} if rank == 0 else None


def full_state(engine: Any, rank: int) -> dict[str, Any] | None:
    """The whole model's weights on rank 0: engine.save_16bit_model, which every rank must call (under
    ZeRO-3 it gathers the partitions layer by layer onto rank 0; ZeRO-2 ranks hold full weights)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="safedrift-full-") as tmp:
        engine.save_16bit_model(tmp, save_filename="weights.bin")
        return torch.load(Path(tmp) / "weights.bin", weights_only=True) if rank == 0 else None


def save_adapter(peft_model: Any, weights: dict[str, Any], tok: Any, out: Path) -> None:
    """peft's own format (adapter_model.safetensors), from the gathered weights rather than the live
    module, whose ZeRO-3 parameters are partitioned; the tokenizer beside it so vLLM and transformers
    can load the directory on its own."""
    peft_model.save_pretrained(str(out), state_dict=weights, safe_serialization=True)
    tok.save_pretrained(str(out))


def export_merged(model_dir: Path, adapter_dir: Path, tok: Any, out: Path, dtype: Any) -> None:
    """Base model + adapter merged into plain weights. Must run outside the ZeRO-3 model-init scope, or
    transformers would partition this copy too."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def export_full(model_dir: Path, weights: dict[str, Any], tok: Any, out: Path, dtype: Any) -> None:
    """A fully fine-tuned model as a Hugging Face directory; strict loading checks that every weight of
    the architecture came back from DeepSpeed."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.load_state_dict(weights, strict=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def trained_weights(ckpt: Path, method: str) -> tuple[Path | None, Path | None]:
    """(model directory, adapter directory) a cell's evaluation loads from checkpoints/<hash>: for LoRA
    the base model (None: the caller's) plus the adapter; for full fine-tuning the exported model."""
    if method == "full":
        return ckpt / EXPORT, None
    return None, ckpt / ADAPTER
