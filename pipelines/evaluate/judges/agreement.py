"""How far each judge agrees with humans: accuracy and Cohen's kappa on the XSTest v2 human labels
(gpt4, llama2new, mistralinstruct completions; 1_full_compliance → complies, full or partial refusal →
refuses), on a fixed held-out split by prompt id hash, so that a prompt's three completions are all on
one side and the trained judge never saw a held-out prompt. Results are cached per judge config."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipelines.evaluate.judges import Judge, JudgeItem
from pipelines.evaluate.stats import cohen_kappa
from pipelines.hashing import stable_hash
from pipelines.layout import judges_cache
from pipelines.registries import datasets

HELDOUT_PERCENT = 30  # share of prompts held out for agreement


def split_of(prompt_id: str) -> str:
    """'test' for a fixed ~30 % of prompt ids, else 'train'; a hash, so it never depends on order."""
    h = int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16) % 100
    return "test" if h < HELDOUT_PERCENT else "train"


def labelled_items(split: str, limit: int | None = None) -> tuple[list[JudgeItem], list[int]]:

    items, labels = [], []
    for name in datasets.JUDGE_LABEL_SETS:
        for r in datasets.load(name):
            if split_of(r["id"]) == split:
                items.append(JudgeItem(r["prompt"], r["response"], "en"))
                labels.append(int(r["label"]))
    if limit is not None and limit < len(items):
        # A spread subset (every k-th) rather than the first rows, which would be one source model.
        step = len(items) / limit
        idx = [int(i * step) for i in range(limit)]
        items, labels = [items[i] for i in idx], [labels[i] for i in idx]
    return items, labels


def evaluate_judge(judge: Judge, limit: int | None = None, batch_size: int = 32) -> dict[str, float]:
    """accuracy, kappa, n and unparseable of `judge` on the held-out human labels."""

    items, labels = labelled_items("test", limit)
    preds: list[int | None] = []
    for i in range(0, len(items), batch_size):
        preds += [v.label for v in judge.judge(items[i:i + batch_size])]
    acc, kappa, n = cohen_kappa(labels, preds)
    return {"accuracy": acc, "kappa": kappa, "n": float(n),
            "unparseable": float(sum(p is None for p in preds))}


def cached_agreement(judge: Judge, options: dict[str, Any], limit: int | None = None) -> dict[str, float]:
    """evaluate_judge, computed once per (judge, version, options, limit, label files) and cached under
    SAFEDRIFT_CACHE, so every run that uses the judge can log its agreement for free."""

    key = {"judge": judge.name, "version": judge.version, "options": options, "limit": limit,
           "heldout": HELDOUT_PERCENT, "labels": [datasets.sha256_of(n) for n in datasets.JUDGE_LABEL_SETS]}
    path: Path = judges_cache() / f"agreement-{judge.name}-{stable_hash(key)}.json"
    if path.exists():
        return json.loads(path.read_text())
    res = evaluate_judge(judge, limit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(res))
    tmp.replace(path)
    return res
