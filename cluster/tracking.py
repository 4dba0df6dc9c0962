"""MLflow set-up: MLFLOW_TRACKING_URI if set, else sqlite in the workdir, with artifacts in the
workdir too (MLflow would otherwise put them in ./mlruns relative to wherever it runs)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow


def tracking_uri(workdir: Path, configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workdir / 'mlflow.db'}"


def setup_mlflow(workdir: Path, experiment: str, configured_uri: str | None = None) -> tuple[str, str]:
    """Points MLflow at the store and returns (tracking_uri, experiment_id)."""
    uri = tracking_uri(workdir, configured_uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        # With a server (http://) the server decides where artifacts go; locally we pin the workdir.
        location = None if uri.startswith("http") else (workdir / "mlartifacts").as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return uri, exp_id
