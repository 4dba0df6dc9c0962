"""Driver for test_sweep_multinode.py, run in its own process: a local two-node Ray cluster
(ray.cluster_utils.Cluster: a head and a worker node, 2 logical CPUs each) and the smoke sweep on it with
1.5-CPU training workers, so a cell's two workers fit only one per node. Writes what the test checks to
the JSON file named by argv[2]. Usage: python multinode_driver.py WORKDIR OUT_JSON"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(workdir: Path, out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # RAY_TMPDIR (set by the test) keeps this cluster's files and address file out of /tmp/ray.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        from pipelines.presets import load_config
        from pipelines.run import run_study

        cfg = load_config("smoke", [f"workdir={workdir}", f"ray.address={cluster.address}",
                                    "finetune.cpus_per_worker=1.5", "sweep.max_concurrent=auto"])
        result = run_study(cfg)
        # The actor table lives in the GCS (no dashboard needed) and keeps dead actors: where each Ray
        # Train worker ran.
        actors = ray._private.state.actors()
        workers = [{"node": a["Address"]["NodeID"], "pid": a["Pid"], "state": a["State"]}
                   for a in actors.values() if a["ActorClassName"] == "RayTrainWorker"]
        out.write_text(json.dumps({
            "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
            "train_workers": workers,
            "cells": {r["cell_id"]: r.get("reused") for r in result.results},
            "study_hash": result.study_hash,
        }, indent=2))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
