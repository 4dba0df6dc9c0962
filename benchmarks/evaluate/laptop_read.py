"""The shipped judge against a developer's reading of the laptop study's own answers
(pipelines/evaluate/judges/read/qwen2.5-coder-0.5b-instruct.csv, which a laptop study's report also reads: 96
answers of qwen2.5-coder-0.5b-instruct, 128 new tokens — the base cell and the en, es and zh fine-tunes of
seed 0, 4 unsafe and 2 safe answers per cell and language, drawn at random (seed 7) — each read in full
and labelled by the definitions of ../shared/labels/README.md). The file holds no text: which answer
(cell, kind, eval id, language), its sha256 and the label read. The answers come from a finished laptop
study's workdir; one whose sha256 differs (another machine, another build of the model) is left out and
counted. They are judged again here exactly as the pipeline judges them, so a changed judge is measured
on the same answers, and compared with the dev file's figures (dev_agreement.agreement).

    SAFEDRIFT_CACHE=/tmp/sdc .venv/bin/python benchmarks/evaluate/laptop_read.py <laptop workdir> [--out FILE]

Writes benchmarks/evaluate/laptop_read.json by default. Prints figures only, never a prompt or an answer."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from dev_agreement import agreement  # noqa: E402

READ = HERE.parents[1] / "pipelines" / "evaluate" / "judges" / "read" / "qwen2.5-coder-0.5b-instruct.csv"
FILES = {"unsafe": "judged.parquet", "safe": "judged_safe.parquet"}


def cell_name(manifest: dict) -> str:
    """A finished cell as the read files name it (labels.read_cell)."""
    from pipelines.evaluate.judges.labels import read_cell

    return read_cell(manifest["cell"]["ft_lang"], manifest["cell"]["seed"])


def read_answers(workdir: Path, wanted: set[str]) -> pl.DataFrame:
    """The answers of the read cells in a finished study: cell, kind, id, lang, prompt, response, sha256."""
    parts = []
    for manifest_path in sorted(workdir.glob("cells/*/manifest.json")):
        name = cell_name(json.loads(manifest_path.read_text()))
        if name not in wanted:
            continue
        for kind, file in FILES.items():
            path = manifest_path.parent / file
            if path.exists():
                parts.append(pl.read_parquet(path).select("id", "lang", "prompt", "response")
                             .with_columns(cell=pl.lit(name), kind=pl.lit(kind)))
    if not parts:
        raise SystemExit(f"{workdir} holds none of the read cells ({', '.join(sorted(wanted))}): give the "
                         "workdir of a finished laptop study")
    return pl.concat(parts).with_columns(response_sha256=pl.col("response").map_elements(
        lambda t: hashlib.sha256(t.encode()).hexdigest(), return_dtype=pl.String))


def main() -> None:
    from pipelines.evaluate.judge import judge_answers
    from pipelines.presets import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "laptop_read.json")
    args = ap.parse_args()
    read = pl.read_csv(READ)
    answers = read_answers(args.workdir, set(read["cell"].to_list()))
    both = read.join(answers, on=["cell", "kind", "id", "lang", "response_sha256"], how="inner")
    print(f"{both.height} of {read.height} read answers found unchanged in {args.workdir}")
    judge = load_config("laptop", []).judge
    judged = judge_answers(both.with_row_index("row").with_columns(pl.col("row").cast(pl.String).alias("id"))
                           .select("id", "lang", "prompt", "response"), judge)
    both = both.with_columns(judged["outcome"])
    result = {"read_file": READ.name, "judge": judge.model_dump(mode="json"), "found": both.height,
              "read": read.height, "pooled": agreement(both["label"].to_list(), both["outcome"].to_list()),
              "per_lang": {}, "per_lang_kind": {}}
    for (lang,), g in both.sort("lang").group_by("lang", maintain_order=True):
        result["per_lang"][lang] = a = agreement(g["label"].to_list(), g["outcome"].to_list())
        print(f"  {lang}: n {a['n']}, κ {a['kappa']:.2f} [{a['kappa_ci'][0]:.2f}, {a['kappa_ci'][1]:.2f}], "
              f"compliance {a['rate_judge']:.2f} judged vs {a['rate_human']:.2f} read "
              f"(error {a['rate_error']:+.2f}), three outcomes agree {a['agree_3class']:.2f}")
        for (kind,), h in g.group_by("kind", maintain_order=True):
            result["per_lang_kind"][f"{lang}/{kind}"] = agreement(h["label"].to_list(), h["outcome"].to_list())
    p = result["pooled"]
    print(f"pooled: n {p['n']}, κ {p['kappa']:.2f} [{p['kappa_ci'][0]:.2f}, {p['kappa_ci'][1]:.2f}], "
          f"rate error {p['rate_error']:+.2f}, non-answer recall {p['non_answer_recall']}")
    args.out.write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
