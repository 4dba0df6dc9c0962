"""How many cells run at once and whether one cell fits at all: per-node arithmetic (no Ray), then the
same check on the session's real cluster, through the study runner and the CLI (bad input fails before
any data set is built or worker started, naming the fix)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sweep_support import REPO

from pipelines.presets import load_config
from pipelines.sweep.resources import (
    Capacity,
    CellNeeds,
    ClusterTooSmallError,
    NodeShape,
    check_fits,
    choose_concurrency,
    worker_slots,
)

TWO_NODES = Capacity([NodeShape({"CPU": 2.0}), NodeShape({"CPU": 2.0})])


def test_workers_are_counted_per_node_beside_the_trial() -> None:
    # Two 1.5-CPU workers fit two 2-CPU nodes only one per node; 4 CPUs in total would suggest 2.
    assert worker_slots({"CPU": 2.0}, CellNeeds(2, 1.5)) == 1
    assert TWO_NODES.slots(CellNeeds(2, 1.5)) == 2
    # A node of exactly 2 CPUs cannot hold two 1-CPU workers and the 0.01-CPU trial that drives them.
    assert worker_slots({"CPU": 2.0}, CellNeeds(2, 1.0)) == 1
    assert worker_slots({"CPU": 4.0}, CellNeeds(2, 1.0)) == 3
    # GPU cells: one GPU per worker caps the slots.
    assert worker_slots({"CPU": 16.0, "GPU": 2.0}, CellNeeds(1, 4, 1.0)) == 2
    assert worker_slots({"CPU": 16.0}, CellNeeds(1, 4, 1.0)) == 0


def test_auto_concurrency_fills_the_cluster_and_explicit_is_kept() -> None:
    local = Capacity([NodeShape({"CPU": 8.0})])
    assert choose_concurrency("auto", CellNeeds(2, 1.0), local, 10)[0] == 3  # 7 slots // 2 workers
    assert choose_concurrency(None, CellNeeds(2, 1.0), local, 2)[0] == 2  # no more than pending cells
    assert choose_concurrency("auto", CellNeeds(2, 1.5), TWO_NODES, 3)[0] == 1
    gpus = Capacity([NodeShape({"CPU": 64.0, "GPU": 4.0})])
    n, why = choose_concurrency("auto", CellNeeds(1, 4, 1.0), gpus, 330)
    assert n == 4 and "4 cell(s) at once" in why  # capped by the GPUs, not the 15 CPU slots
    n, why = choose_concurrency(5, CellNeeds(1, 4, 1.0), gpus, 330)
    assert n == 5 and "the others wait" in why
    # An autoscaling cluster whose GPU group is at 0 replicas: its maximum size counts.
    scaling = Capacity([NodeShape({"CPU": 4.0})], [NodeShape({"CPU": 8.0, "GPU": 1.0}, count=8)])
    assert choose_concurrency("auto", CellNeeds(1, 4, 1.0), scaling, 330)[0] == 8
    check_fits(CellNeeds(1, 4, 1.0), scaling)


def test_a_cell_that_cannot_fit_names_the_fix() -> None:
    with pytest.raises(ClusterTooSmallError) as err:
        check_fits(CellNeeds(2, 3.0), TWO_NODES, local_cluster=True)
    msg = str(err.value)
    assert "2 training worker(s) × 3 CPU" in msg and "{CPU: 2}, {CPU: 2}" in msg
    assert "finetune.num_workers" in msg and "finetune.cpus_per_worker" in msg and "ray.num_cpus" in msg
    with pytest.raises(ClusterTooSmallError, match="set finetune.use_gpu=false"):
        check_fits(CellNeeds(2, 1.0, 1.0), TWO_NODES)
    assert isinstance(err.value, ValueError)  # the CLI reports bad input with exit code 2


def test_study_fails_before_any_work_when_a_cell_cannot_fit(ray_cluster, tmp_path) -> None:
    from pipelines.run import run_study

    # The session cluster has 4 logical CPUs on one node: 4 workers × 1 CPU + the trial do not fit.
    cfg = load_config("smoke", [f"workdir={tmp_path}", "finetune.num_workers=4"])
    t0 = time.time()
    with pytest.raises(ClusterTooSmallError, match="lower finetune.num_workers"):
        run_study(cfg)
    assert time.time() - t0 < 30
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "checkpoints").exists()


def test_cli_reports_a_cell_that_cannot_fit(ray_cluster, tmp_path) -> None:
    # Joins the session's cluster (no second cluster to start) and fails with a message, exit code 2.
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sweep", "-c", "smoke", f"workdir={tmp_path}",
         "finetune.cpus_per_worker=3", "--address", address],
        capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "one cell needs 2 training worker(s) × 3 CPU" in proc.stderr
    assert "lower finetune.cpus_per_worker" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "datasets").exists()
