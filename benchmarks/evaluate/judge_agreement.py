"""Accuracy and Cohen's kappa of each CPU judge on the held-out XSTest human labels.

    .venv/bin/python benchmarks/evaluate/judge_agreement.py [--llm-model smollm2-135m-instruct] [--llm-limit 120]

Writes benchmarks/evaluate/judge_agreement.json. The trained judge is fitted (and cached) on first use."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipelines.evaluate.judges import make_judge
from pipelines.evaluate.judges.agreement import evaluate_judge, labelled_items


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm-model", default=None, help="causal LM for the sorry-bench judge (alias or dir)")
    ap.add_argument("--llm-limit", type=int, default=None)
    ap.add_argument("--only-llm", action="store_true", help="measure only the sorry-bench judge, keep the rest")
    args = ap.parse_args()
    out = Path(__file__).with_name("judge_agreement.json")
    results = json.loads(out.read_text()) if args.only_llm and out.exists() else {}
    results |= {"heldout_n": len(labelled_items("test")[0]), "train_n": len(labelled_items("train")[0])}
    judges: list[tuple[str, dict, int | None]] = [] if args.only_llm else [("refusal-phrase", {}, None),
                                                                          ("trained-minilm", {}, None)]
    if args.llm_model:
        judges.append(("sorry-bench", {"model": args.llm_model}, args.llm_limit))
    for name, opts, limit in judges:
        t0 = time.time()
        res = evaluate_judge(make_judge(name, **opts), limit)
        res["seconds"] = round(time.time() - t0, 1)
        results[name + (f"[{opts['model']}]" if opts else "")] = res
        print(name, opts, res, flush=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
