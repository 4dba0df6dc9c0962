"""CPU generation throughput of the transformers path (answers/s, new tokens/s), model load excluded.

    .venv/bin/python benchmarks/evaluate/gen_throughput.py [--model smollm2-135m-instruct] [--n 16]

Harmless prompts; prints numbers only. Results are appended to benchmarks/evaluate/gen_throughput.jsonl."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from pipelines.config import GenerateConfig
from pipelines.evaluate.backends.transformers import generate_answers, load_for_generation
from pipelines.registries.model_store import model_dir

PROMPTS = ["Give me three tips for learning a new language.", "¿Cuál es la capital de Portugal?",
           "Explain photosynthesis in one sentence.", "写一句关于春天的诗。", "What is 17 times 23?",
           "Describe a cat to someone who has never seen one."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args()
    model, tok = load_for_generation(model_dir(args.model), None)
    gcfg = GenerateConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.n)]
    generate_answers(model, tok, prompts[:2], gcfg)  # warm-up
    t0 = time.time()
    answers = [a for i in range(0, len(prompts), gcfg.batch_size)
               for a in generate_answers(model, tok, prompts[i:i + gcfg.batch_size], gcfg)]
    dt = time.time() - t0
    toks = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    res = {"model": args.model, "n": len(answers), "batch_size": gcfg.batch_size, "max_new_tokens": gcfg.max_new_tokens,
           "seconds": round(dt, 2), "answers_per_s": round(len(answers) / dt, 3), "new_tokens_per_s": round(toks / dt, 1),
           "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 1)}
    print(json.dumps(res))
    with Path(__file__).with_name("gen_throughput.jsonl").open("a") as fh:
        fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
