"""benchmarks/sweep/driver_memory.py at a small size: it synthesizes a finished study, runs the driver's
sweep-level steps (pipelines.run.run_study after the grid) in fresh processes, and its record shows the real
path (label columns only) peaking below a driver that reads every judged answer whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "sweep" / "driver_memory.py"
STEPS = ["start_and_imports", "study_start_precheck_and_parent_run", "setup_cell_runs_as_trials_log_them",
         "gather_cell_manifests", "search_child_runs", "read_cell_tidy_tables", "deltas",
         "delta_rows_log_batch_write_tidy", "write_report", "log_report_artifacts", "sweep_manifest"]


def _deltas_growth(run: dict) -> float:
    step = next(s for s in run["steps"] if s["step"] == "deltas")
    return step["peak_rss_mib"] - step["start_rss_mib"]


def test_driver_memory_small(tmp_path):
    out = tmp_path / "driver_memory.json"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cells", "12", "--prompts", "200", "--passes", "steps",
                           "--workdir", str(tmp_path / "wd"), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    synth = record["synthesis"]
    assert synth["cells"] == 12 and synth["prompts_unsafe_per_cell"] == 200
    assert synth["rows_judged"] == 12 * 200 and synth["rows_judged_safe"] == 12 * 95
    assert {"judged.parquet", "judged_safe.parquet", "metrics_tidy.parquet", "manifest.json",
            "generations", "generations_safe"} <= set(synth["bytes"])
    real, naive = record["runs"]["real"]["steps"], record["runs"]["naive"]["steps"]
    for run in (real, naive):
        assert [s["step"] for s in run["steps"]] == STEPS
        assert run["cells"] == 12
        assert run["lifetime_peak_rss_mib"] >= max(s["peak_rss_mib"] for s in run["steps"][1:])
        # 3 models × 3 seeds of one fine-tune × 9 eval languages, for compliance and over-refusal each: the
        # change, its p-value, the discordance, the prompt SE and the seeds' pooled p (evaluate/compare.py);
        # one log_batch per fine-tuned cell.
        assert run["delta_rows"] == 9 * 9 * 2 * 5
        assert run["log_batch"]["calls"] == 9
    assert real["tidy_rows"] == naive["tidy_rows"]
    # Reading every column of the judged answers costs the deltas step memory that the label columns do not
    # (at this size about 4 MiB of answer texts per model; both variants run the same code otherwise).
    assert _deltas_growth(real) + 1.0 < _deltas_growth(naive), (real["steps"], naive["steps"])
