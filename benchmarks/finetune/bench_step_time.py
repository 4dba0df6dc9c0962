"""Step time of safedrift's fine-tuning loop under Ray Train + DeepSpeed against a bare PyTorch loop on
the same model and the same batches, in the same run; tokens/s of both, on CPU.

    .venv/bin/python benchmarks/finetune/bench_step_time.py                      # smoke + laptop models
    .venv/bin/python benchmarks/finetune/bench_step_time.py --models tiny-llama --steps 20

Both sides take the same packed batches (finetune.packing: every row of a batch is a full max_length
sequence, so every step has the same shape), the same LoRA, AdamW, linear schedule with warm-up, gradient
clipping at 1.0, fp32 and the same number of torch threads per process.
- Ray side: pipelines.finetune's own training loop in a TorchTrainer (DeepSpeed ZeRO-2 over gloo). The
  loop times each optimizer step itself; the number here is the median after 2 warm-up steps, so fit()'s
  start-up (worker group, process group, model load, DeepSpeed initialisation) is excluded.
- Bare side: the same steps in this process, plain PyTorch, no Ray, no DeepSpeed.
Set-ups: "local": the same loop in Ray Train's local mode (in this process, one thread: DeepSpeed without
Ray's worker processes); "1xT": one Ray worker with T threads vs the bare loop with T threads (what Ray +
DeepSpeed cost on one process); "2x1": two workers of one thread each, batch B per worker, vs two bare loops
running at once in two processes, one thread and batch B each (so both sides keep two cores busy; the
difference is the gradient all-reduce, DeepSpeed and Ray). tokens/s is the sum over workers/processes. The bare loop runs before and after each Ray run; its step time is the median over both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "180")

# The training loop leaves its first steps out of its step time (StepStats.warmup); the bare loop too.
WARMUP = 2
MAX_LENGTH = {"tiny-llama": 96, "smollm2-135m-instruct": 128}


def write_dataset(root: Path, rows: list[dict[str, Any]]) -> Path:
    """The benign split in the layout pipelines.translate writes (English, no QA flags)."""
    import polars as pl

    part = root / "benign" / "lang=en"
    part.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"idx": list(range(len(rows))), "instruction": [r["instruction"] for r in rows],
                  "input": [r["input"] for r in rows], "output": [r["output"] for r in rows]}
                 ).write_parquet(part / "part-0.parquet")
    (root / "manifest.json").write_text("{}")
    return root


def rows_for_steps(ft: Any, model_dir: Path, rows: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """The shortest prefix of `rows` that gives every worker `steps` optimizer steps in one epoch (the
    training loop runs its whole plan, so the data set decides how many steps both sides time)."""
    from pipelines.finetune.data import build_sequences
    from pipelines.finetune.data import load_tokenizer as _load_tokenizer

    tok = _load_tokenizer(model_dir)
    need = steps * ft.batch_size * ft.grad_accum * ft.num_workers
    for k in range(need, len(rows) + 1):
        if len(build_sequences(tok, rows[:k], ft)) >= need:
            return rows[:k]
    raise SystemExit(f"{len(rows)} rows give fewer than {need} sequences: raise --rows")


def batches_for_rank0(ft: Any, model_dir: Path, ds: Path, epochs: int, steps: int) -> tuple[list[Any], Any]:
    """Exactly the micro-batches rank 0 of the Ray run trains on, in order."""
    from pipelines.finetune.data import build_sequences, collate, micro_batch, plan_steps
    from pipelines.finetune.data import load_tokenizer as _load_tokenizer
    from pipelines.finetune.recipe import benign_rows as _benign_rows

    tok = _load_tokenizer(model_dir)
    seqs = build_sequences(tok, _benign_rows(ds, "en"), ft)
    plan = plan_steps(len(seqs), ft.num_workers, ft, epochs)
    shard = seqs[:plan.per_rank]
    raw = [micro_batch(shard, plan, ft.batch_size, 0, m) for m in range(min(steps, plan.optimizer_steps))]
    return [(collate(b, tok.pad_token_id), sum(len(e["input_ids"]) for e in b)) for b in raw], plan


def bare_loop(ft: Any, model_dir: Path, targets: list[str], batches: list[Any], threads: int,
              warmup: int, total_steps: int, barrier: Any = None) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup, set_seed

    from pipelines.finetune.data import FORWARD_KWARGS

    torch.set_num_threads(threads)
    set_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=ft.lora.r, lora_alpha=ft.lora.alpha, lora_dropout=ft.lora.dropout,
                                             target_modules=targets, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, int(ft.warmup_ratio * total_steps), total_steps)
    if barrier is not None:
        barrier.wait()  # concurrent copies start stepping together
    secs, toks = [], []
    for batch, tokens in batches:
        t0 = time.perf_counter()
        loss = model(**batch, **FORWARD_KWARGS).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        secs.append(time.perf_counter() - t0)
        toks.append(tokens)
    secs, toks = secs[warmup:], toks[warmup:]
    return {"step_time_s": statistics.median(secs), "tokens_per_s": sum(toks) / sum(secs), "timed_steps": len(secs),
            "steps": secs}


def _bare_child(args: tuple, barrier: Any, out: Any) -> None:
    out.put(bare_loop(*args, barrier=barrier))


def bare_side(procs: int, *args: Any) -> dict[str, Any]:
    """The bare loop in `procs` processes at once, each on its own copy of the model and batch and with
    no communication: the same number of busy cores (and the same memory-bandwidth contention) as
    `procs` Ray workers, so the 2x1 ratio shows what the all-reduce, DeepSpeed and Ray add, not what
    sharing a 2-core machine costs."""
    if procs == 1:
        return bare_loop(*args)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    children = [ctx.Process(target=_bare_child, args=(args, barrier, out)) for _ in range(procs)]
    for c in children:
        c.start()
    results = [out.get() for _ in children]
    for c in children:
        c.join()
    steps = [x for r in results for x in r["steps"]]
    return {"step_time_s": statistics.median(steps), "tokens_per_s": sum(r["tokens_per_s"] for r in results),
            "timed_steps": len(steps), "steps": steps}


def ray_loop(cfg: Any, ft: Any, alias: str, model_dir: Path, ds: Path, epochs: int, storage: Path,
             local: bool = False) -> dict[str, Any]:
    from pipelines.cells import Cell
    from pipelines.finetune import loop_config, make_trainer

    lc = loop_config(cfg.model_copy(update={"finetune": ft}), Cell(alias, "en", 0, epochs), model_dir, ds)
    t0 = time.time()
    result = make_trainer(ft, lc, f"bench-{alias}-{ft.num_workers}x{int(ft.cpus_per_worker)}-{int(t0)}",
                          storage, local=local).fit()
    if result.error:
        raise result.error
    m = dict(result.metrics)
    m["fit_wall_s"] = round(time.time() - t0, 1)
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny-llama", "smollm2-135m-instruct"])
    ap.add_argument("--setups", nargs="+", default=["local", "1x1", "2x1"],
                    help="workers x threads each, or local (Ray Train local mode, one thread)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (after 2 warm-up steps)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = ap.parse_args()

    import ray
    import torch

    from pipelines.config import FinetuneConfig, LoraConfig
    from pipelines.presets import load_config
    from pipelines.registries.model_store import model_dir
    from pipelines.registries.models import model_spec

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    cfg = load_config("smoke")
    work = Path(tempfile.mkdtemp(prefix="safedrift-bench-"))
    from pipelines.registries.datasets import load

    rows = [dict(r) for r in load("alpaca_en", limit=args.rows)]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
                               "torch": torch.__version__, "ray": ray.__version__, "args": vars(args) | {"out": str(args.out)},
                               "runs": []}
    for alias in args.models:
        mdir = model_dir(alias)
        targets = list(model_spec(alias).lora_targets)
        for setup in args.setups:
            # "local": the same loop and DeepSpeed engine in Ray Train's local mode, i.e. in this process
            # with one thread: DeepSpeed's share of the overhead without Ray's worker processes.
            local = setup == "local"
            workers, threads = (1, 1) if local else (int(x) for x in setup.split("x"))
            ft = FinetuneConfig(method="lora", lora=LoraConfig(r=8, alpha=16, dropout=0.0), lr=1e-4,
                                batch_size=args.batch, max_length=MAX_LENGTH.get(alias, 128), packing=True,
                                num_workers=workers, cpus_per_worker=threads, checkpoint_every_steps=0,
                                export_merged=False, max_failures=0)
            want = WARMUP + args.steps
            ds = write_dataset(work / f"datasets-{alias}-{setup}", rows_for_steps(ft, mdir, rows, want))
            batches, plan = batches_for_rank0(ft, mdir, ds, 1, 10**9)
            total = plan.optimizer_steps
            assert total >= want and len(batches) == total, (total, want, len(batches))
            shape = list(batches[0][0]["input_ids"].shape)
            print(f"[{alias} {setup}] {total} steps of {shape} per worker", flush=True)
            # The bare loop runs before and after the Ray run and counts both: this shared 2-core VM drifts
            # by ±10 % over minutes, and bracketing keeps that drift out of the ratio.
            before = bare_side(workers, ft, mdir, targets, batches, threads, WARMUP, total)
            ray_m = ray_loop(cfg, ft, alias, mdir, ds, 1, work / "ray_train", local=local)
            after = bare_side(workers, ft, mdir, targets, batches, threads, WARMUP, total)
            bare = {"step_time_s": statistics.median(before["steps"] + after["steps"]),
                    "tokens_per_s": (before["tokens_per_s"] + after["tokens_per_s"]) / 2,
                    "timed_steps": before["timed_steps"] + after["timed_steps"],
                    "step_time_before_s": before["step_time_s"], "step_time_after_s": after["step_time_s"]}
            run = {"model": alias, "setup": setup, "batch_shape_per_worker": shape, "steps": total,
                   "ray_deepspeed": {k: ray_m[k] for k in ("step_time_s", "tokens_per_s", "timed_steps",
                                                           "fit_wall_s", "train_seconds")},
                   "bare": bare, "ratio_step_time": ray_m["step_time_s"] / bare["step_time_s"]}
            print(json.dumps(run), flush=True)
            results["runs"].append(run)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| model | setup | batch/worker | bare step | Ray+DS step | ratio | bare tok/s | Ray+DS tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        b, d = r["bare"], r["ray_deepspeed"]
        print(f"| {r['model']} | {r['setup']} | {r['batch_shape_per_worker']} | {b['step_time_s']:.4f} s | "
              f"{d['step_time_s']:.4f} s | {r['ratio_step_time']:.3f} | {b['tokens_per_s']:.0f} | {d['tokens_per_s']:.0f} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
