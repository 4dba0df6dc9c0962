"""`safedrift labels sample`: a blind sample of a finished study's answers in one language, for a person to
label (refused / complied / non_answer), so the judge is checked on answers like the ones it judged.

The CSV has the columns judge.labels reads (pipelines/evaluate/judges/labels.py: CSV_COLUMNS) with label
and weak left empty, and nothing a judge said: a labeller who sees the judge's verdict tends to agree
with it. Answers repeated across cells (the base and a fine-tune often answer alike) are kept once, so no
answer is labelled twice. Prompts and answers go to the file only, never to stdout or a log."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import read_manifest, workdir_lock, write_text_atomic
from pipelines.cells import cell_dir, study_cells, study_hashes
from pipelines.errors import DataError
from pipelines.evaluate.judges.base import OUTCOMES
from pipelines.evaluate.judges.labels import CSV_COLUMNS
from pipelines.layout import Workdir

# The judged files of a cell and the kind of prompt each holds (labels.CSV_COLUMNS: kind).
KINDS = (("judged.parquet", "unsafe"), ("judged_safe.parquet", "safe"))
READ = ["id", "lang", "prompt", "response"]  # never the judge's columns


@dataclass(frozen=True)
class Sample:
    path: Path
    n: int
    by_kind: dict[str, int]
    available: int  # distinct answers in the language, before sampling


def _answers(cfg: Any, wd: Workdir, lang: str, preset: str) -> list[dict[str, str]]:
    """Every distinct answer in `lang` of every cell, unsafe and safe; DataError when a cell is missing."""
    ds_hash, study_hash = study_hashes(cfg)
    cells = study_cells(cfg)
    dirs = {c: cell_dir(wd, cfg, c, ds_hash) for c in cells}
    done = [(c, d) for c, d in dirs.items() if read_manifest(d) is not None]
    missing = [c.id for c in cells if c not in dict(done)]
    if missing:
        raise DataError(f"study {study_hash} has not finished in {wd.root}: {len(missing)} of {len(cells)} cells "
                        f"have no results ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); run "
                        f"`safedrift run -c {preset}` with the same overrides first")
    rows, seen = [], set()
    for cell, d in done:
        for name, kind in KINDS:
            if not (d / name).exists():
                continue
            df = pl.read_parquet(d / name, columns=READ).filter(pl.col("lang") == lang)
            for r in df.iter_rows(named=True):
                key = (kind, r["id"], r["prompt"], r["response"])
                if key not in seen:
                    seen.add(key)
                    rows.append({"lang": lang, "kind": kind, "source_id": r["id"], "cell": cell.id,
                                 "prompt": r["prompt"] or "", "response": r["response"] or "", "label": "",
                                 "weak": ""})
    return rows


def _csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def sample_labels(cfg: Any, lang: str, n: int, out: Path | None = None, seed: int = 0,
                  preset: str = "<preset>") -> Sample:
    """A seeded random sample of `n` distinct answers in `lang` from the finished study `cfg` describes,
    written atomically as a blind CSV at `out` (default: <workdir>/labels/<lang>-sample-<study>.csv).
    Refuses to overwrite a file: it may hold a person's labels."""
    if lang not in cfg.eval_langs:
        raise DataError(f"the study does not evaluate '{lang}' (eval_langs {list(cfg.eval_langs)}): sample one "
                        f"of those, or add '{lang}' to eval_langs and run the study first")
    if n < 1:
        raise DataError(f"--n {n}: give the number of answers to sample (at least 1)")
    wd = Workdir.open(cfg.resolved_workdir())
    path = (out or wd.root / "labels" / f"{lang}-sample-{study_hashes(cfg)[1][:12]}.csv").expanduser().resolve()
    if path.exists():
        raise DataError(f"{path} exists (it may hold labels already): give another --out or move it away")
    with workdir_lock(wd.root):
        pool = _answers(cfg, wd, lang, preset)
    if not pool:
        raise DataError(f"the study has no answers in '{lang}' in {wd.root}")
    picked = random.Random(seed).sample(pool, min(n, len(pool)))  # in random order: the file is blind
    write_text_atomic(path, _csv(picked))
    by_kind = {k: sum(r["kind"] == k for r in picked) for _, k in KINDS}
    return Sample(path, len(picked), by_kind, len(pool))


def instructions(s: Sample, lang: str, preset: str) -> str:
    """What the person does next (no prompt or answer in it)."""
    short = " (every distinct answer the study has in it)" if s.n == s.available else ""
    kinds = ", ".join(f"{v} {k}" for k, v in s.by_kind.items())
    return (f"wrote {s.n} answers in '{lang}' ({kinds}){short} to {s.path}, without the judge's labels.\n"
            f"Label it: fill `label` on every row with one of {', '.join(OUTCOMES)} (the answer's relation to the "
            "request, not its quality or language; definitions in ../shared/labels/README.md), `weak` 1 where "
            "an answer only offers help or starts without content.\n"
            f"Then measure the judge on it: safedrift run -c {preset} <the same overrides> "
            f"'judge.labels={{{lang}: {s.path}}}' (or set judge.labels: {{{lang}: {s.path}}} in your config).")
