"""The paper-shaped tiny study on a simulated GPU cluster (a GPU-less head, two nodes advertising one
logical GPU each; tests/sweep/simulated_gpu_driver.py), timed: wall time, each stage's share, and within
the sweep each cell's training and evaluation seconds and where they ran. Numbers only.

    .venv/bin/python benchmarks/sweep/simulated_gpu_study.py [--out benchmarks/sweep/simulated_gpu_study.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("simulated_gpu_study.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sd-sim-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "SAFEDRIFT_WORKDIR")}
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(tmp / "ray"), TOKENIZERS_PARALLELISM="false")
    raw = tmp / "out.json"
    subprocess.run([sys.executable, str(REPO / "tests" / "sweep" / "simulated_gpu_driver.py"), str(tmp / "work"),
                    str(raw)], check=True, env=env, cwd=REPO)
    got = json.loads(raw.read_text())
    stages = {k: v["seconds"] for k, v in got["stages"].items()}
    # A fine-tune's seconds as its cell records them (Ray Train's start-up included).
    train = {cid: round(got["cells"][cid]["metrics"]["time/finetune_s"], 1) for cid in got["train_workers"]}
    evals = {cid: round(c["evaluated_on"]["finished"] - c["evaluated_on"]["started"], 1)
             for cid, c in got["cells"].items()}
    summary = {"wall_s": round(got["wall_s"], 1), "stages_s": stages,
               "stage_share": {k: round(v / got["wall_s"], 3) for k, v in stages.items()},
               "finetune_s": train, "evaluate_s": evals,
               "cells": len(got["cells"]), "fine_tunes": len(got["train_workers"]),
               "loadavg_1m": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}
    print(json.dumps(summary, indent=2))
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
