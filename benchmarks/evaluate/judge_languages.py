"""Cohen's κ and accuracy of each CPU judge per language, on answers of models it never trained on.

    .venv/bin/python benchmarks/evaluate/judge_languages.py [--judges refusal-phrase trained-minilm trained-e5]
                                                           [--langs en es pt zh] [--limit N]

Labels: the XSTest v2 completions of gpt4, llama2new and mistralinstruct with their human labels, and the same
answers machine-translated by Apertium into es and pt (labels carry over), judged as written and after
back-translation to English. A trained judge is held out by source model AND prompt: refitted 9 times on
two models' answers to two thirds of the prompts (every training language), with C and threshold chosen
inside each fold, it predicts the third model's answers to the other third (pipelines/evaluate/judges/
validity.py). Each judge's rows are written to judge_languages.json as they finish (a rerun reuses the
judges cache: translations, embeddings and validity results)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipelines.evaluate.judges import make_judge
from pipelines.evaluate.judges.validity import judge_validity


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"  # κ is undefined where the labels hold one class only


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judges", nargs="+", default=["refusal-phrase", "trained-minilm", "trained-e5"])
    ap.add_argument("--langs", nargs="+", default=["en", "es", "pt", "zh"])
    ap.add_argument("--limit", type=int, default=None, help="English labels used (spread over the three models)")
    ap.add_argument("--no-back", action="store_true", help="leave out the back-translated label sets")
    args = ap.parse_args()
    out = Path(__file__).with_name("judge_languages.json")
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.judges:
        t0 = time.time()
        rows = judge_validity(make_judge(name), {}, args.langs, ["apertium"], None, args.limit, not args.no_back)
        old = {(r["lang"], r["condition"], r["source"]): r for r in results.get(name, {}).get("rows", [])}
        old |= {(r["lang"], r["condition"], r["source"]): r for r in rows}
        results[name] = {"rows": list(old.values()), "seconds": round(time.time() - t0, 1), "langs": args.langs,
                         "limit": args.limit}
        for r in rows:
            print(f"{name:15s} {r['lang']:3s} {r['condition']:16s} {r['source']:32s} n={r['n']:5d} "
                  f"κ={_f(r['kappa'])} acc={_f(r['accuracy'])}", flush=True)
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
