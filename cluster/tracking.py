"""MLflow set-up: MLFLOW_TRACKING_URI if set, else sqlite in the workdir, with artifacts in the
workdir too (MLflow would otherwise put them in ./mlruns relative to wherever it runs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tracking:
    """Where a sweep's runs go: the store, the experiment, and the study's parent run."""

    uri: str
    experiment_id: str
    parent_run_id: str | None


def tracking_uri(default_db: Path, configured: str | None = None) -> str:
    """The configured URI, else MLFLOW_TRACKING_URI, else sqlite at `default_db` (the workdir's mlflow.db)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_db}"


def point_mlflow(uri: str) -> None:
    """mlflow.set_tracking_uri without its side effect on the environment: MLflow exports the URI as
    MLFLOW_TRACKING_URI for subprocesses, which would silently send the next study this process runs to
    this one's store (safedrift hands every worker its URI explicitly)."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def setup_mlflow(default_db: Path, artifacts: Path, experiment: str,
                 configured_uri: str | None = None) -> tuple[str, str]:
    """Points MLflow at the store and returns (tracking_uri, experiment_id)."""
    import mlflow  # deferred: reading the URI (reruns, `plan`, `report`) must not import MLflow

    uri = tracking_uri(default_db, configured_uri)
    point_mlflow(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        # With a server (http://) the server decides where artifacts go; locally we pin the workdir.
        location = None if uri.startswith("http") else artifacts.as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return uri, exp_id


def close_stale_runs(uri: str, experiment_id: str, study_hash: str, workdir_id: str) -> int:
    """Marks KILLED the runs a killed driver left RUNNING for this study in this workdir (its parent runs
    and their cells), so the MLflow UI does not show a dead sweep as still going. Returns how many it
    closed. Called only while this process holds the workdir's lock, i.e. after that workdir's old driver
    is gone; a live driver of the same study in another workdir on the same MLflow server has another
    `workdir_id` and is left alone (it was marked KILLED under it, issue 30)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    parents = client.search_runs([experiment_id], filter_string=(
        f"tags.`safedrift.study_hash` = '{study_hash}' and tags.`safedrift.workdir` = '{workdir_id}' "
        "and attributes.status = 'RUNNING'"))
    closed = 0
    for parent in parents:
        children = client.search_runs([experiment_id], filter_string=(
            f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'RUNNING'"))
        for run in [*children, parent]:
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed
