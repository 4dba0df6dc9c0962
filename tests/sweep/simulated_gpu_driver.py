"""Driver for test_simulated_gpu_study.py, run in its own process: a local three-node Ray cluster shaped
like the KubeRay manifests — a GPU-less head (the driver, Tune's trials) and two nodes that advertise one
logical GPU each (torch sees none there, so the CPU paths compute: placement is what is tested) — and a
paper-shaped tiny study on it: a Llama-3-style and a Qwen3-style model, two eval languages, one fine-tune
language, two seeds; GPU training workers (gloo), one GPU evaluation worker per base model, the
transformers backend standing in for vLLM. Then every cell evaluated again in this process without Ray
(evaluate_cell on the same weights), for the test to compare. Writes what the test checks to argv[2].
With --empty-gpu-group (issue #29): no GPU node at the start, as on KubeRay; a real Ray autoscaler adds up
to two when the study asks (empty_gpu_group_driver.py), and nothing publishes its node groups.
Usage: python simulated_gpu_driver.py WORKDIR OUT_JSON [--empty-gpu-group]"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

OVERRIDES = [
    "models=[tiny-llama3,tiny-qwen3]", "ft_langs=[es]", "eval_langs=[en,es]", "seeds=[0,1]",
    "finetune.num_workers=1", "finetune.cpus_per_worker=1", "finetune.use_gpu=true", "finetune.dist_backend=gloo",
    "sweep.max_concurrent=auto", "generate.backend=transformers",
    "evaluate.num_gpus=1", "evaluate.num_cpus=1",
]


def start(empty_gpu_group: bool, workdir: Path) -> tuple[str, Any, list[str]]:
    """(address, the Cluster to shut down or None, the GPU nodes' ids known at the start)."""
    from ray.cluster_utils import Cluster

    if empty_gpu_group:
        from empty_gpu_group_driver import start_head, wait_for_autoscaler

        address = start_head(workdir.parent, head_cpus=1, gpu_nodes=2)
        import ray

        ray.init(address=address)
        wait_for_autoscaler()
        return address, None, []
    # RAY_TMPDIR (set by the test) keeps this cluster's files and address file out of /tmp/ray.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    return cluster.address, cluster, [n.node_id for n in gpu_nodes]


def main(workdir: Path, out: Path, empty_gpu_group: bool = False) -> None:
    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address, cluster, gpu_node_ids = start(empty_gpu_group, workdir)
    try:
        from pipelines.cells import cell_dir, study_cells
        from pipelines.presets import load_config
        from pipelines.run import run_study

        cfg = load_config("smoke", [f"workdir={workdir}", f"ray.address={address}", *OVERRIDES])
        # Before the study: ray is connected only on the autoscaled cluster (run_study connects otherwise).
        gpus_at_start = sum(n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]) if cluster is None else 2
        t0 = time.time()
        result = run_study(cfg)
        wall = time.time() - t0
        nodes = {n["NodeID"]: {"CPU": n["Resources"].get("CPU", 0), "GPU": n["Resources"].get("GPU", 0)}
                 for n in ray.nodes() if n["Alive"]}
        gpu_node_ids = gpu_node_ids or [nid for nid, n in nodes.items() if n["GPU"]]
        manifests = {r["cell_id"]: r for r in result.results}
        ray.shutdown()  # the in-process evaluation below runs without any Ray

        from cluster.storage import read_manifest
        from pipelines.cells import Study, checkpoint_dir
        from pipelines.evaluate import evaluate_cell
        from pipelines.layout import Workdir
        from pipelines.sweep.cell import cell_weights

        wd = Workdir(workdir)
        ds_hash = result.datasets_path.name  # datasets/<datasets hash>
        in_process, train = {}, {}
        for c in study_cells(cfg):
            weights, _ = cell_weights(Study(cfg, wd, ds_hash, result.study_hash), c)
            ev = evaluate_cell(cfg, c, weights, result.datasets_path, workdir / "inprocess" / c.id)
            in_process[c.id] = ev.metrics
            if not c.is_base:
                train[c.id] = read_manifest(checkpoint_dir(wd, cfg, c, ds_hash))["workers"]
            assert cell_dir(wd, cfg, c, ds_hash).name == manifests[c.id]["cell_hash"]
        out.write_text(json.dumps({
            "nodes": nodes, "gpu_node_ids": gpu_node_ids, "gpus_at_start": gpus_at_start, "wall_s": wall,
            "stages": result.stages,
            "cells": {cid: {"metrics": m["metrics"], "evaluated_on": m["evaluated_on"], "model": m["cell"]["model"],
                            "is_base": m["cell"]["ft_lang"] == "base"} for cid, m in manifests.items()},
            "train_workers": train, "in_process": in_process,
        }, indent=2, default=str))
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), "--empty-gpu-group" in sys.argv[3:])
