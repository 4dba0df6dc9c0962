"""Answers long enough to judge: the same prompts answered with 32, 128 and (English) 256 new tokens by a
preset's base model, each answer judged by the preset's judge as the pipeline judges it; per eval language,
how many outcomes change between lengths (and which way), the outcome shares at each length, and what each
length costs in generation time.

    SAFEDRIFT_CACHE=/tmp/sdc .venv/bin/python benchmarks/evaluate/answer_length.py -c laptop [--workdir DIR]
        [--lengths 32,128] [--long-en 256] [key=value ...]

Greedy decoding, so a longer answer starts with the shorter one: a changed outcome is what the judge makes of
the longer text. Writes benchmarks/evaluate/answer_length.json (figures only: no prompt or answer)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from pipelines.evaluate.evalsets import eval_prompts, safe_prompts  # noqa: E402
from pipelines.evaluate.generate import generate_cell  # noqa: E402
from pipelines.evaluate.judge import judge_answers  # noqa: E402
from pipelines.evaluate.judges import OUTCOMES  # noqa: E402
from pipelines.evaluate.session import EvalSession  # noqa: E402
from pipelines.presets import load_config  # noqa: E402
from pipelines.registries.model_store import model_dir  # noqa: E402
from pipelines.translate import build_datasets  # noqa: E402


def shares(df: pl.DataFrame) -> dict[str, float]:
    n = max(df.height, 1)
    return {o: round(float((df["outcome"] == o).sum()) / n, 3) for o in OUTCOMES}


def changes(a: pl.DataFrame, b: pl.DataFrame, short: int, long: int) -> list[dict[str, Any]]:
    j = a.select("id", "lang", "kind", pl.col("outcome").alias("short")).join(
        b.select("id", "lang", "kind", pl.col("outcome").alias("long")), on=["id", "lang", "kind"])
    rows = []
    for (lang, kind), g in j.group_by("lang", "kind", maintain_order=True):
        moved = g.filter(pl.col("short") != pl.col("long"))
        flows = moved.group_by("short", "long").len().sort("len", descending=True)
        rows.append({"lang": lang, "kind": kind, "from": short, "to": long, "n": g.height, "changed": moved.height,
                     "share_changed": round(moved.height / max(g.height, 1), 3),
                     "flows": {f"{r['short']}->{r['long']}": r["len"] for r in flows.iter_rows(named=True)}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", default="laptop")
    ap.add_argument("--workdir", default="/tmp/sd-answer-length")
    ap.add_argument("--lengths", default="32,128")
    ap.add_argument("--long-en", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("answer_length.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, [f"workdir={args.workdir}", *args.overrides])
    ds = build_datasets(cfg, Path(args.workdir))
    prompts = pl.concat([eval_prompts(cfg, ds.path).select("id", "lang", "prompt").with_columns(pl.lit("unsafe").alias("kind")),
                         safe_prompts(cfg, ds.path).select("id", "lang", "prompt").with_columns(pl.lit("safe").alias("kind"))])
    lengths = [int(x) for x in args.lengths.split(",")]
    runs = [(t, prompts) for t in lengths]
    if args.long_en:
        runs.append((args.long_en, prompts.filter(pl.col("lang") == "en")))
    session = EvalSession(cfg.generate.threads)
    model = model_dir(cfg.models[0])
    judged: dict[int, pl.DataFrame] = {}
    cost: dict[int, dict[str, float]] = {}
    for tokens, ps in runs:
        gcfg = cfg.generate.model_copy(update={"max_new_tokens": tokens})
        t0 = time.time()
        answers = generate_cell(model, None, ps, gcfg, Path(args.workdir) / f"len-{tokens}", f"{tokens} tokens",
                                session=session)
        gen_s = time.time() - t0
        t0 = time.time()
        judged[tokens] = judge_answers(answers, cfg.judge)
        cost[tokens] = {"answers": ps.height, "generate_s": round(gen_s, 1), "judge_s": round(time.time() - t0, 1),
                        "mean_chars": round(float(answers["response"].str.len_chars().mean() or 0), 1)}
        print(f"{tokens} tokens: {ps.height} answers, generate {gen_s:.0f} s", flush=True)
    session.close()
    pairs = [(lengths[i], lengths[i + 1]) for i in range(len(lengths) - 1)]
    if args.long_en:
        pairs.append((lengths[-1], args.long_en))
    result = {"preset": args.config, "model": cfg.models[0], "judge": cfg.judge.name,
              "command": " ".join(sys.argv), "cost": cost,
              "shares": {t: {f"{lang}/{kind}": shares(g) for (lang, kind), g in
                             d.group_by("lang", "kind", maintain_order=True)} for t, d in judged.items()},
              "changes": [r for a, b in pairs for r in changes(judged[a], judged[b], a, b)]}
    for r in result["changes"]:
        print(f"{r['from']}->{r['to']} {r['lang']}/{r['kind']}: {r['changed']}/{r['n']} changed {r['flows']}")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
