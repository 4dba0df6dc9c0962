"""Connecting a run to Ray: a local cluster by default, an existing one by `ray.address`, `--address` or
RAY_ADDRESS ("auto", "ray://head:10001"), with the runtime environment the workers need."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# Variables a driver passes on to every worker so that remote stages find the same data, models and
# tracking store (on a multi-node cluster the workers do not share the driver's shell).
FORWARDED_ENV = (
    "SAFEDRIFT_DATA_DIR",
    "SAFEDRIFT_MODEL_DIR",
    "SAFEDRIFT_WORKDIR",
    "SAFEDRIFT_CACHE",
    "MLFLOW_TRACKING_URI",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TORCH_EXTENSIONS_DIR",
)


# Ray Train V2's placement-group cleaner asks the State API, which lives in the dashboard, every few
# seconds; without the dashboard (the default: it costs about 1 GB) each ask logs a harmless warning that
# would bury the progress bars. Only that logger is raised to ERROR, in every worker process.
QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def runtime_env() -> dict[str, Any]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    # Tokenizers' own thread pool fights Ray's workers for the two cores of a laptop.
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {"env_vars": env, "worker_process_setup_hook": "cluster.connect.quiet_worker_logs"}


def connect(address: str | None = None, num_cpus: int | None = None, include_dashboard: bool = False) -> None:
    """Starts or joins a Ray cluster once per process."""
    import ray  # deferred: a rerun whose every stage is reused never imports Ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"runtime_env": runtime_env(), "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
        log.info("joined Ray cluster at %s", address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=include_dashboard, **kwargs)
        log.info("started a local Ray cluster (num_cpus=%s)", num_cpus)
