"""The smoke study's results, taken from a finished workdir, and two workdirs compared: a change of layout
must leave every measured number of a study as it was. Taken: the sweep's tidy metric table (every
cell × language × metric, with its interval and n), every MLflow metric of every run (each step) except the
wall-clock ones (`time/*`, `*_per_s`: they measure the machine's load), and the hashes that name the
study, its data sets, its fine-tuned weights and its report.

    safedrift run -c smoke workdir=<A>      # before the change
    safedrift run -c smoke workdir=<B>      # after it
    .venv/bin/python benchmarks/layout/smoke_metrics.py <A> <B> --out benchmarks/layout/smoke_before_after.json

Exits 1 when anything differs, listing what."""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from pathlib import Path
from typing import Any

import polars as pl

WALL_CLOCK = ("time/", "_per_s")


def _number(v: Any) -> Any:
    """NaN written as the string "nan", so that two NaNs compare equal in JSON."""
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def tidy_rows(workdir: Path) -> tuple[str, list[dict[str, Any]]]:
    """The study hash (sweeps/<study hash>/<store>: the store's name is a hash of the tracking URI, which
    holds the workdir's path, so it differs between any two workdirs) and the sweep's tidy table, rows
    sorted."""
    [path] = sorted(workdir.glob("sweeps/*/*/metrics_tidy.parquet"))
    table = pl.read_parquet(path)
    rows = [{k: _number(v) for k, v in r.items()} for r in table.iter_rows(named=True)]
    rows.sort(key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return path.parent.parent.name, rows


def mlflow_metrics(workdir: Path) -> dict[str, dict[str, list[Any]]]:
    """run name -> metric key -> [(step, value), ...], wall-clock metrics left out."""
    db = sqlite3.connect(workdir / "mlflow.db")
    out: dict[str, dict[str, list[Any]]] = {}
    for name, key, step, value in db.execute(
            "select r.name, m.key, m.step, m.value from metrics m join runs r on r.run_uuid = m.run_uuid "
            "order by r.name, m.key, m.step"):
        if not any(w in key for w in WALL_CLOCK):
            out.setdefault(name, {}).setdefault(key, []).append([step, _number(value)])
    return out


def hashes(workdir: Path) -> dict[str, list[str]]:
    """The names of the workdir's outputs (each the hash of what it depends on), lock files left out."""
    return {folder: sorted(p.name for p in (workdir / folder).iterdir() if not p.name.startswith("."))
            for folder in ("datasets", "checkpoints", "cells", "reports")}


def results(workdir: Path) -> dict[str, Any]:
    sweep, rows = tidy_rows(workdir)
    return {"sweep": sweep, "hashes": hashes(workdir), "tidy": rows, "mlflow": mlflow_metrics(workdir)}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = [f"{k}: {a[k]} != {b[k]}" for k in ("sweep", "hashes") if a[k] != b[k]]
    if a["tidy"] != b["tidy"]:
        out.append(f"tidy table: {sum(r not in b['tidy'] for r in a['tidy'])} of {len(a['tidy'])} rows differ")
    for run in sorted(set(a["mlflow"]) | set(b["mlflow"])):
        ma, mb = a["mlflow"].get(run, {}), b["mlflow"].get(run, {})
        out += [f"mlflow {run} {k}: {ma.get(k)} != {mb.get(k)}" for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)]
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    a, b = results(args.before), results(args.after)
    diff = differences(a, b)
    summary = {"identical": not diff, "differences": diff, "sweep": a["sweep"], "hashes": a["hashes"],
               "tidy_rows": len(a["tidy"]), "mlflow_runs": len(a["mlflow"]),
               "mlflow_metrics": sum(len(m) for m in a["mlflow"].values()),
               "results": a}
    text = json.dumps(summary, indent=1, sort_keys=True, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({k: summary[k] for k in ("identical", "differences", "sweep", "tidy_rows", "mlflow_runs",
                                              "mlflow_metrics")}, indent=1))
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
