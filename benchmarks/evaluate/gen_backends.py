"""Generation backends side by side on a preset's real eval suite (unsafe and safe prompts in every eval
language, as one cell generates them): answers a second, identical answers, and agreement of the judge
labels (the preset's judge and refusal-phrase, each through the pipeline's judging with back-translation)
with the baseline's.

    .venv/bin/python benchmarks/evaluate/gen_backends.py [-c laptop] [--workdir /tmp/fastgen] [--rounds 3] \
        [--variant fastcpu] [--variant fastcpu:dtype=float32] [--variant fastcpu:threads=1] [--batch-size N] \
        [--model smollm2-135m-instruct | --model-dir DIR] [--per-lang 8] [--baseline-batch 32]

The baseline is the preset's generate config on the transformers backend at batch 32; a variant takes
the preset's batch size unless it sets its own (fastcpu:batch_size=32). Rounds alternate the
variants (A B C A B C ...) so the shared machine's drift hits each alike; model load included, as in a cell.
Prints and appends numbers only (never a prompt or an answer) to benchmarks/evaluate/gen_backends.jsonl;
each row notes the 1-minute load average, so a loaded round can be read as such. Quote medians of the
per-round ratios."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.config import StudyConfig
from pipelines.evaluate.evalsets import eval_prompts, safe_prompts
from pipelines.evaluate.generate import generate_cell
from pipelines.evaluate.judge import judge_answers
from pipelines.presets import load_config
from pipelines.registries.model_store import model_dir
from pipelines.translate import build_datasets

RESULTS = Path(__file__).with_name("gen_backends.jsonl")


GCFG_FIELDS = ("batch_size", "threads", "max_new_tokens")  # a variant may set these generate fields too


def parse_variant(spec: str) -> dict[str, Any]:
    """"fastcpu:dtype=float32,threads=1" -> {"backend": "fastcpu", "options": {"dtype": "float32"}, "threads": 1}:
    the GenerateConfig update that makes the variant."""
    name, _, opts = spec.partition(":")
    update: dict[str, Any] = {"backend": name, "options": {}}
    for kv in filter(None, opts.split(",")):
        k, _, v = kv.partition("=")
        value = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
        if k in GCFG_FIELDS:
            update[k] = value
        else:
            update["options"][k] = value
    return update


def run_variant(mdir: Path, suites: dict[str, pl.DataFrame], gcfg: Any, label: str) -> tuple[float, float, pl.DataFrame]:
    """(wall seconds, this process's CPU seconds, answers). CPU time is the steadier number on a shared
    machine; wall time is what a study waits."""
    tmp = Path(tempfile.mkdtemp(prefix="genbackends-"))
    t0, c0 = time.time(), time.process_time()
    got = [generate_cell(mdir, None, frame, gcfg, tmp / name, desc=f"{label} {name}") for name, frame in suites.items()]
    dt, cpu = time.time() - t0, time.process_time() - c0
    shutil.rmtree(tmp)
    return dt, cpu, pl.concat(got, how="diagonal_relaxed")


def labels(cfg: StudyConfig, answers: pl.DataFrame, judge: str) -> list[int | None]:
    jcfg = cfg.judge if judge == cfg.judge.name else cfg.judge.model_copy(update={"name": judge, "options": {}})
    return judge_answers(answers, jcfg)["label"].to_list()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--config", default="laptop")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fastgen"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", action="append", default=None, help="backend[:opt=value,...]; repeatable")
    ap.add_argument("--batch-size", type=int, default=None, help="the variants' batch size (default: the preset's)")
    ap.add_argument("--per-lang", type=int, default=None,
                    help="only the first N prompts per eval language of each suite (a shorter run; default all)")
    ap.add_argument("--model", default=None, help="a model alias (default: the preset's first model)")
    ap.add_argument("--model-dir", type=Path, default=None, help="a model directory instead of an alias")
    ap.add_argument("--baseline-batch", type=int, default=32,
                    help="the transformers baseline's batch size (32: the issue's 1.0x reference)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    ds = build_datasets(cfg, args.workdir)
    suites = {"unsafe": eval_prompts(cfg, ds.path),
              "safe": safe_prompts(cfg, ds.path).select("id", "lang", "category", "prompt", "prompt_en")}
    if args.per_lang:
        suites = {k: f.filter(pl.int_range(pl.len()).over("lang") < args.per_lang) for k, f in suites.items()}
    model = str(args.model_dir) if args.model_dir else args.model or cfg.models[0]
    mdir = args.model_dir or model_dir(model)
    # The baseline is the transformers path with the preset's other generate settings (the laptop preset
    # itself now runs fastcpu), so "today's transformers path" stays what every variant is measured against.
    base = cfg.generate.model_copy(update={"backend": "transformers", "options": {},
                                           "batch_size": args.baseline_batch})
    variants = {"baseline": base}
    for spec in args.variant or ["fastcpu"]:
        update = parse_variant(spec)
        if "batch_size" not in update:
            update["batch_size"] = args.batch_size or cfg.generate.batch_size
        variants[spec] = base.model_copy(update=update)
    answers: dict[str, pl.DataFrame] = {}
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    cpu_seconds: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for label, gcfg in variants.items():
            dt, cpu, answers[label] = run_variant(mdir, suites, gcfg, label)
            seconds[label].append(dt)
            cpu_seconds[label].append(cpu)
            n = answers[label].height
            res = {"config": args.config, "model": model, "round": r, "variant": label,
                   "backend": gcfg.backend, "options": gcfg.options, "threads": gcfg.threads, "answers": n, "per_lang": args.per_lang,
                   "batch_size": gcfg.batch_size, "cpu_seconds": round(cpu, 1),
                   "max_new_tokens": gcfg.max_new_tokens, "seconds": round(dt, 1), "answers_per_s": round(n / dt, 3),
                   "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 1)}
            print(json.dumps(res), flush=True)
            with RESULTS.open("a") as fh:
                fh.write(json.dumps(res) + "\n")
    judges = [cfg.judge.name] + [j for j in ("refusal-phrase",) if j != cfg.judge.name]
    ref = {j: labels(cfg, answers["baseline"], j) for j in judges}
    for label in variants:
        if label == "baseline":
            continue
        # Per round: baseline seconds / variant seconds of the same round (side by side, same load).
        ratios = [b / v for b, v in zip(seconds["baseline"], seconds[label], strict=True)]
        cpu_ratios = [b / v for b, v in zip(cpu_seconds["baseline"], cpu_seconds[label], strict=True)]
        a, b = answers["baseline"]["response"].to_list(), answers[label]["response"].to_list()
        summary: dict[str, Any] = {"summary": label, "config": args.config, "model": model, "rounds": args.rounds,
                                   "speedup_median": round(statistics.median(ratios), 2),
                                   "speedup_per_round": [round(x, 2) for x in ratios],
                                   "cpu_speedup_median": round(statistics.median(cpu_ratios), 2),
                                   "identical_answers": sum(x == y for x, y in zip(a, b, strict=True)), "of": len(a)}
        for j in judges:
            got = labels(cfg, answers[label], j)
            summary[f"label_agreement/{j}"] = round(sum(x == y for x, y in zip(ref[j], got, strict=True)) / len(a), 3)
        summary["loadavg_1m"] = round(os.getloadavg()[0], 1)
        print(json.dumps(summary), flush=True)
        with RESULTS.open("a") as fh:
            fh.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
