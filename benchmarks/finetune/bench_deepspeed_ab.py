"""DeepSpeed's own cost per training step, measured without drift: one process holds two identical LoRA
models, one trained by a plain PyTorch loop and one by a DeepSpeed engine (safedrift's ZeRO config, gloo,
fp32), and their steps alternate on the same batch. On a shared VM whose speed drifts by ±10 % over
minutes, interleaving is the only way to see a few per cent. Ray is not involved (see bench_step_time.py).

    .venv/bin/python benchmarks/finetune/bench_deepspeed_ab.py --models tiny-llama smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def one_rank_group() -> None:
    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)


def lora_model(alias: str, targets: list[str]) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipelines.registries.model_store import model_dir

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir(alias), dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                            task_type="CAUSAL_LM"))


def packed_batch(alias: str, batch: int, max_length: int) -> dict[str, Any]:
    from pipelines.config import FinetuneConfig
    from pipelines.finetune.data import build_sequences, collate
    from pipelines.finetune.data import load_tokenizer as _load_tokenizer
    from pipelines.registries.datasets import load
    from pipelines.registries.model_store import model_dir

    tok = _load_tokenizer(model_dir(alias))
    ft = FinetuneConfig(max_length=max_length, packing=True)
    seqs = build_sequences(tok, [dict(r) for r in load("alpaca_en", limit=8 * batch)], ft)
    return collate(seqs[:batch], tok.pad_token_id)


def measure(alias: str, stage: int, steps: int, batch: int, max_length: int) -> dict[str, Any]:
    import deepspeed
    import torch

    from pipelines.config import FinetuneConfig
    from pipelines.finetune.data import FORWARD_KWARGS
    from pipelines.finetune.deepspeed_config import deepspeed_config
    from pipelines.registries.models import model_spec

    targets = list(model_spec(alias).lora_targets)
    data = packed_batch(alias, batch, max_length)
    bare = lora_model(alias, targets).train()
    bare_params = [p for p in bare.parameters() if p.requires_grad]
    bare_opt = torch.optim.AdamW(bare_params, lr=1e-4, weight_decay=0.0)
    ds_model = lora_model(alias, targets)
    ds_opt = torch.optim.AdamW([p for p in ds_model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ft = FinetuneConfig(batch_size=batch, num_workers=1, zero_stage=stage)
    engine, _, _, _ = deepspeed.initialize(model=ds_model, optimizer=ds_opt, config=deepspeed_config(ft, 1))
    engine.train()

    def bare_step() -> None:
        loss = bare(**data, **FORWARD_KWARGS).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_params, 1.0)  # DeepSpeed clips at 1.0 too
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)
        float(loss.detach())

    def ds_step() -> None:
        loss = engine(**data, **FORWARD_KWARGS).loss
        engine.backward(loss)
        engine.step()
        float(loss.detach())

    times: dict[str, list[float]] = {"bare": [], "deepspeed": []}
    for i in range(steps + 2):
        for name, fn in (("bare", bare_step), ("deepspeed", ds_step)) if i % 2 == 0 else (
                ("deepspeed", ds_step), ("bare", bare_step)):  # alternate who goes first
            t0 = time.perf_counter()
            fn()
            if i >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - t0)
    b, d = statistics.median(times["bare"]), statistics.median(times["deepspeed"])
    return {"model": alias, "zero_stage": stage, "batch_shape": list(data["input_ids"].shape), "steps": steps,
            "bare_step_s": b, "deepspeed_step_s": d, "ratio": d / b}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny-llama", "smollm2-135m-instruct"])
    ap.add_argument("--stages", nargs="+", type=int, default=[2, 3])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results_deepspeed_ab.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    one_rank_group()
    runs = []
    for alias in args.models:
        for stage in args.stages:
            run = measure(alias, stage, args.steps, args.batch, args.max_length)
            print(json.dumps(run), flush=True)
            runs.append(run)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": args.threads,
                                    "torch": torch.__version__, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
