"""Length-sorted, even generation batches (pipelines.evaluate.generate.length_batches) against prompt-order slices,
on a preset's real eval suite (unsafe and safe prompts in every eval language), as one cell generates it.

    .venv/bin/python benchmarks/evaluate/gen_batching.py [-c laptop] [--workdir /tmp/genbench] [--rounds 2]

Runs the two orders alternately (A B A B ...) so that the machine's drift hits both alike; model load
included, as in a cell. Prints and appends numbers only (never a prompt or an answer) to
benchmarks/evaluate/gen_batching.jsonl. It also reports how many prompt-token slots each order pads."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipelines.evaluate.backends.transformers import length_batches, prompt_lengths
from pipelines.evaluate.evalsets import eval_prompts, safe_prompts
from pipelines.evaluate.generate import generate_cell
from pipelines.presets import load_config
from pipelines.registries.model_store import model_dir
from pipelines.translate import build_datasets


def padded_slots(lengths: list[int], batches: list[list[int]]) -> tuple[int, int]:
    """(real prompt tokens, slots computed) when each batch is left-padded to its longest prompt."""
    return sum(lengths), sum(len(b) * max(lengths[i] for i in b) for b in batches)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--config", default="laptop")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/genbench"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config)
    ds = build_datasets(cfg, args.workdir)
    suites = {"unsafe": eval_prompts(cfg, ds.path),
              "safe": safe_prompts(cfg, ds.path).select("id", "lang", "category", "prompt", "prompt_en")}
    mdir = model_dir(cfg.models[0])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mdir)
    bs = cfg.generate.batch_size
    padding = {}
    for name, frame in suites.items():
        lengths = prompt_lengths(tok, frame["prompt"].to_list())
        plain = [list(range(i, min(i + bs, len(lengths)))) for i in range(0, len(lengths), bs)]
        padding[name] = {"sorted": padded_slots(lengths, length_batches(lengths, bs)),
                         "prompt_order": padded_slots(lengths, plain)}
    print(json.dumps({"padding (real tokens, slots)": padding}))
    answers: dict[bool, list[str]] = {}
    for r in range(args.rounds):
        for sort in (True, False):
            tmp = Path(tempfile.mkdtemp(prefix="genbench-"))
            t0 = time.time()
            gcfg = cfg.generate.model_copy(update={"options": {"sort_by_length": sort}})
            got = [generate_cell(mdir, None, frame, gcfg, tmp / name, desc=f"{name} sorted={sort}")
                   for name, frame in suites.items()]
            dt = time.time() - t0
            answers[sort] = [a for g in got for a in g["response"].to_list()]
            shutil.rmtree(tmp)
            n = sum(g.height for g in got)
            res = {"config": args.config, "model": cfg.models[0], "round": r, "sorted": sort, "answers": n,
                   "batch_size": bs, "max_new_tokens": cfg.generate.max_new_tokens, "seconds": round(dt, 1),
                   "answers_per_s": round(n / dt, 3), "cpus": os.cpu_count(),
                   "loadavg_1m": round(os.getloadavg()[0], 1)}
            print(json.dumps(res), flush=True)
            with Path(__file__).with_name("gen_batching.jsonl").open("a") as fh:
                fh.write(json.dumps(res) + "\n")
    same = sum(a == b for a, b in zip(answers[True], answers[False], strict=True))
    # Greedy answers can differ where padding changes the float sums enough to flip a near tie.
    print(json.dumps({"identical_answers": same, "of": len(answers[True])}))


if __name__ == "__main__":
    main()
