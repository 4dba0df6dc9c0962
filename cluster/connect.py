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


def placement() -> dict[str, Any]:
    """Where this process runs as Ray placed it: its pid, and inside Ray its node, worker and the GPU ids
    Ray gave it (logical ones on a cluster that only advertises GPUs); outside Ray (Ray Train's local mode,
    a plain process) only the pid. A record, so it never raises."""
    info: dict[str, Any] = {"pid": os.getpid(), "node_id": None, "worker_id": None, "gpu_ids": []}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            info |= {"node_id": ctx.get_node_id(), "worker_id": ctx.get_worker_id(),
                     "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    except Exception as exc:  # placement is a record, never a reason to fail the work it describes
        log.debug("no Ray placement to record: %s", exc)
    return info
