"""Driver for test_empty_gpu_group.py, run in its own process: a Ray cluster shaped like a KubeRay
RayJob's at the start — a GPU-less head and a real autoscaler (Ray's v1 monitor, as KubeRay's sidecar
runs it) with a GPU node group at 0 nodes, whose node groups nothing publishes (Ray 2.60:
`get_cluster_config()` is None) — joined by address as the RayJob's driver joins. The autoscaler's nodes
are Ray's fake multi-node provider's: real raylets on this machine. The paper-shaped checks run on it
(training and evaluation-only), then a GPU task that the autoscaler must answer by adding the GPU node.
The same checks on a cluster this driver started itself (ray.address unset) must still fail. Writes what
the test checks to argv[1]. Usage: python empty_gpu_group_driver.py OUT_JSON"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GPU_STUDY = ["finetune.use_gpu=true", "finetune.num_workers=1", "finetune.cpus_per_worker=1",
             "evaluate.num_gpus=1", "evaluate.num_cpus=1", "sweep.max_concurrent=auto"]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def checks(cfg: Any) -> dict[str, Any]:
    """The study's own pre-flight on the connected cluster: what it decided, or the error it raised; and
    the resources of its NLLB translation actors."""
    from pipelines.errors import ClusterTooSmallError
    from pipelines.sweep.resources import check_cluster, plan_concurrency
    from pipelines.translate import actor_resources

    handler = Collect()
    logging.getLogger("pipelines.sweep.resources").addHandler(handler)
    out: dict[str, Any] = {"translate": actor_resources(cfg, ["nllb"], n_batches=8)}
    try:
        out["concurrency"] = plan_concurrency(cfg, n_pending=6)
        check_cluster(cfg, train=False)  # the evaluation-only resume (run_evaluation)
    except ClusterTooSmallError as exc:
        out["error"] = str(exc)
    finally:
        logging.getLogger("pipelines.sweep.resources").removeHandler(handler)
    out["warnings"] = handler.messages
    return out


def autoscaling_config(gcs_address: str, head_cpus: int = 2, gpu_nodes: int = 1) -> dict[str, Any]:
    """A GPU-less head and a group of up to `gpu_nodes` nodes of 2 CPUs and 1 GPU, starting at none
    (raycluster.yaml's shape)."""
    return {
        "cluster_name": "empty-gpu-group", "max_workers": gpu_nodes, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        # The fake provider starts each node's raylet itself: no updater (it would ssh, fail, and end the node).
        "provider": {"type": "external", "gcs_address": gcs_address, "disable_node_updaters": True,
                     "disable_launch_config_check": True,
                     "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            "gpu": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0,
                    "max_workers": gpu_nodes}},
        "head_node_type": "ray.head.default", "auth": {"ssh_user": "ray"}, "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}


def start_head(tmp: Path, head_cpus: int = 2, gpu_nodes: int = 1) -> str:
    """`ray start --head` with the autoscaler (never `ray stop`: the test kills what it started)."""
    port = free_port()
    address = f"{ray_ip()}:{port}"
    config = tmp / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(address, head_cpus, gpu_nodes)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    subprocess.run([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                    f"--num-cpus={head_cpus}", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                    f"--autoscaling-config={config}"], env=env, check=True)
    return address


def ray_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def wait_for_autoscaler(timeout: float = 60.0) -> float:
    from pipelines.sweep.resources import autoscaler_running

    t0 = time.monotonic()
    while not autoscaler_running():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the autoscaler wrote no status")
        time.sleep(0.5)
    return time.monotonic() - t0


def main(out: Path) -> None:
    import ray

    from pipelines.presets import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = start_head(out.parent)
    try:
        ray.init(address=address)
        got: dict[str, Any] = {"cluster_config": repr(ray._private.state.state.get_cluster_config()),
                               "autoscaler_seen_after_s": round(wait_for_autoscaler(), 2)}
        got["joined"] = checks(load_config("smoke", [f"ray.address={address}", *GPU_STUDY]))
        got["started_here"] = checks(load_config("smoke", GPU_STUDY))

        @ray.remote(num_gpus=1, num_cpus=1)
        def on_gpu() -> dict[str, Any]:
            return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ray.get_gpu_ids()}

        got["gpu_nodes_before"] = sum(n["Resources"].get("GPU", 0) > 0 for n in ray.nodes() if n["Alive"])
        t0 = time.monotonic()
        ref = on_gpu.remote()  # asked for before any GPU node exists, as Tune's trials ask
        got["gpu_task"] = ray.get(ref, timeout=180)
        got["gpu_task"]["waited_s"] = round(time.monotonic() - t0, 2)
        got["head_node_id"] = ray.get_runtime_context().get_node_id()
        out.write_text(json.dumps(got, indent=1))
    finally:
        ray.shutdown()  # the test's harness kills the cluster's processes (they carry its tag)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
