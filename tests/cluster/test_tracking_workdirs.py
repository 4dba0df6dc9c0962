"""Two workdirs running the same study against one MLflow server (issue 30, item 9): a driver closes the
stale runs of its own workdir only, never the live runs of the other. Real MLflow, on a sqlite store."""

from __future__ import annotations

from pathlib import Path

import mlflow

from cluster.tracking import close_stale_runs
from pipelines.run import workdir_tag


def _running_parent(client: mlflow.MlflowClient, exp: str, study: str, workdir: Path) -> str:
    run = client.create_run(exp, tags={"safedrift.study_hash": study, "safedrift.workdir": workdir_tag(workdir)})
    child = client.create_run(exp, tags={"mlflow.parentRunId": run.info.run_id})
    assert child.info.status == "RUNNING"
    return run.info.run_id


def test_a_driver_closes_only_its_own_workdirs_stale_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("safedrift", artifact_location=str(tmp_path / "artifacts"))
    a, b = tmp_path / "workdir-a", tmp_path / "workdir-b"
    live_in_a = _running_parent(client, exp, "study1", a)  # a live driver in workdir A
    stale_in_b = _running_parent(client, exp, "study1", b)  # what a killed driver in B left
    assert workdir_tag(a) != workdir_tag(b) and workdir_tag(a) == workdir_tag(a)

    assert close_stale_runs(uri, exp, "study1", workdir_tag(b)) == 2  # B's parent and its cell
    assert client.get_run(stale_in_b).info.status == "KILLED"
    assert client.get_run(live_in_a).info.status == "RUNNING"  # was: KILLED under the other's feet
