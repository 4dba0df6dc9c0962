"""A finished study's answers judged again by the judge installed now, beside the labels they were given
when the study ran: per cell × kind × language, the shares complied and non_answer then and now. A
finished cell keeps the labels of the judge that judged it (a changed judge version does not re-run a
cell), so this is how far a study's figures move under a newer judge, measured without generating again.

    SAFEDRIFT_CACHE=/tmp/sdc .venv/bin/python benchmarks/evaluate/rejudge_study.py /tmp/lq [-c laptop] [--out FILE]

Writes benchmarks/evaluate/rejudge_study.csv by default (figures only) and prints the means per
fine-tuning language × eval language (unsafe prompts) and per kind × language."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from laptop_read import FILES, cell_name  # noqa: E402

SHARES = ("complied_then", "complied_now", "non_answer_then", "non_answer_now")


def main() -> None:
    from pipelines.evaluate.judge import judge_answers
    from pipelines.presets import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("-c", "--config", default="laptop")
    ap.add_argument("--out", type=Path, default=HERE / "rejudge_study.csv")
    args = ap.parse_args()
    judge = load_config(args.config, []).judge
    rows = []
    for manifest_path in sorted(args.workdir.glob("cells/*/manifest.json")):
        name = cell_name(json.loads(manifest_path.read_text()))
        for kind, file in FILES.items():
            if not (path := manifest_path.parent / file).exists():
                continue
            then = pl.read_parquet(path)
            now = judge_answers(then.select("id", "lang", "prompt", "response"), judge)
            both = then.select("lang", pl.col("outcome").alias("then"), pl.col("judge_version").alias("version"))
            both = both.with_columns(now=now["outcome"])
            for (lang,), g in both.group_by("lang", maintain_order=True):
                rows.append({"cell": name, "kind": kind, "lang": lang, "n": g.height,
                             "version_then": g["version"][0], "version_now": now["judge_version"][0],
                             "complied_then": (g["then"] == "complied").mean(),
                             "complied_now": (g["now"] == "complied").mean(),
                             "non_answer_then": (g["then"] == "non_answer").mean(),
                             "non_answer_now": (g["now"] == "non_answer").mean()})
    if not rows:
        raise SystemExit(f"{args.workdir} has no finished cell: give the workdir of a finished study")
    df = pl.DataFrame(rows)
    df.write_csv(args.out)
    ft = pl.col("cell").str.split("/").list.first()
    with pl.Config(tbl_rows=200, float_precision=2):
        print(df.group_by("kind", "lang").agg(pl.col(*SHARES).mean()).sort("kind", "lang"))
        print(df.filter(pl.col("kind") == "unsafe").with_columns(ft=ft).group_by("ft", "lang")
              .agg(pl.col(*SHARES).mean()).sort("ft", "lang"))


if __name__ == "__main__":
    main()
