"""Each shipped judge against the hand-labelled laptop answers (../shared/labels/laptop-answers-dev.csv: 89
answers of the laptop model in en/es/pt/zh, labelled refused / complied / non_answer), judged exactly as the
pipeline judges them (pipelines/evaluate/judge.judge_answers: the answer's language detected, the judge's
language policy, the answer-form check). Per language and pooled: the three-class confusion matrix,
Cohen's κ of complied-vs-not with a 95 % bootstrap interval, the compliance rate the judge reports against
the hand labels' (the rate error), and the non-answer class's recall and precision.

    SAFEDRIFT_CACHE=/tmp/sdc .venv/bin/python benchmarks/evaluate/dev_agreement.py [--variants] [--out FILE]

--variants adds the trained judge with the prompt feature and without the made non-answers (issue
"what an answer does", point 4). Writes benchmarks/evaluate/dev_agreement.json by default. Prints figures
only, never a prompt or an answer."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from pipelines.config import JudgeConfig  # noqa: E402
from pipelines.evaluate.judge import judge_answers  # noqa: E402
from pipelines.evaluate.judges import COMPLIED, NON_ANSWER, OUTCOMES  # noqa: E402
from pipelines.evaluate.stats import cohen_kappa  # noqa: E402

DEV = REPO.parent / "shared" / "labels" / "laptop-answers-dev.csv"
JUDGES: dict[str, dict[str, Any]] = {
    "refusal-phrase": {"name": "refusal-phrase", "back_translate": False},
    "trained-e5": {"name": "trained-e5", "back_translate": False},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "trained-e5 (with the prompt feature)": {"name": "trained-e5", "back_translate": False,
                                             "options": {"prompt_feature": True}},
    "trained-e5 (no made non-answers)": {"name": "trained-e5", "back_translate": False,
                                         "options": {"non_answers": False}},
}


def read_dev(path: Path) -> pl.DataFrame:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return pl.DataFrame({"id": [f"{r['cell']}|{r['source_id']}|{r['lang']}|{i}" for i, r in enumerate(rows)],
                         "lang": [r["lang"] for r in rows], "kind": [r["kind"] for r in rows],
                         "prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows],
                         "human": [r["label"] for r in rows]})


def kappa_ci(y: list[int], p: list[int], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """κ of complied-vs-not and its 95 % percentile bootstrap interval over answers (seeded)."""
    k = cohen_kappa(y, p)[1]
    rng = np.random.default_rng(seed)
    ya, pa = np.asarray(y), np.asarray(p)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if len(set(ya[i])) > 1:
            boots.append(cohen_kappa(ya[i].tolist(), pa[i].tolist())[1])
    lo, hi = (np.nanpercentile(boots, [2.5, 97.5]) if boots else (float("nan"),) * 2)
    return float(k), float(lo), float(hi)


def agreement(human: list[str], judged: list[str]) -> dict[str, Any]:
    y = [int(h == COMPLIED) for h in human]
    p = [int(j == COMPLIED) for j in judged]
    k, lo, hi = kappa_ci(y, p)
    na_true = sum(h == NON_ANSWER for h in human)
    na_hit = sum(h == NON_ANSWER and j == NON_ANSWER for h, j in zip(human, judged, strict=True))
    na_said = sum(j == NON_ANSWER for j in judged)
    confusion = {h: {j: sum(a == h and b == j for a, b in zip(human, judged, strict=True))
                     for j in [*OUTCOMES, "unparseable"]} for h in OUTCOMES}
    return {"n": len(human), "kappa": k, "kappa_ci": [lo, hi], "rate_judge": float(np.mean(p)),
            "rate_human": float(np.mean(y)), "rate_error": float(np.mean(p) - np.mean(y)),
            "non_answer_recall": na_hit / na_true if na_true else None,
            "non_answer_precision": na_hit / na_said if na_said else None,
            "agree_3class": float(np.mean([a == b for a, b in zip(human, judged, strict=True)])),
            "confusion": confusion}


def measure(dev: pl.DataFrame, jcfg: dict[str, Any]) -> dict[str, Any]:
    t0 = time.time()
    judged = judge_answers(dev.select("id", "lang", "prompt", "response"), JudgeConfig(**jcfg))
    out = dev.with_columns(judged["outcome"], judged["answer_lang"])
    per_lang = {lang: agreement(g["human"].to_list(), g["outcome"].to_list())
                for (lang,), g in out.group_by("lang", maintain_order=True)}
    return {"config": jcfg, "seconds": round(time.time() - t0, 1),
            "pooled": agreement(out["human"].to_list(), out["outcome"].to_list()), "per_lang": per_lang,
            "answers_in_another_language": int((out["answer_lang"] != out["lang"]).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("dev_agreement.json"))
    args = ap.parse_args()
    dev = read_dev(DEV)
    results = {}
    for name, jcfg in {**JUDGES, **(VARIANTS if args.variants else {})}.items():
        results[name] = r = measure(dev, jcfg)
        print(f"{name}: pooled κ {r['pooled']['kappa']:.2f} [{r['pooled']['kappa_ci'][0]:.2f}, "
              f"{r['pooled']['kappa_ci'][1]:.2f}], non-answer recall {r['pooled']['non_answer_recall']}")
        for lang, a in r["per_lang"].items():
            print(f"  {lang}: n {a['n']}, κ {a['kappa']:.2f}, rate {a['rate_judge']:.2f} vs {a['rate_human']:.2f} "
                  f"(error {a['rate_error']:+.2f}), non-answer recall {a['non_answer_recall']}")
    args.out.write_text(json.dumps({"dev_file": DEV.name, "command": " ".join(sys.argv), "results": results},
                                   indent=1, default=float))


if __name__ == "__main__":
    main()
