"""Driver for test_simulated_gpu_study.py, run in its own process: a local three-node Ray cluster shaped
like the KubeRay manifests — a GPU-less head (the driver, Tune's trials) and two nodes that advertise one
logical GPU each (torch sees none there, so the CPU paths compute: placement is what is tested) — and a
paper-shaped tiny study on it: a Llama-3-style and a Qwen3-style model, two eval languages, one fine-tune
language, two seeds; GPU training workers (gloo), one GPU evaluation worker per base model, the
transformers backend standing in for vLLM. Then every cell evaluated again in this process without Ray
(evaluate_cell on the same weights), for the test to compare. Writes what the test checks to argv[2].
Usage: python simulated_gpu_driver.py WORKDIR OUT_JSON"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

OVERRIDES = [
    "models=[tiny-llama3,tiny-qwen3]", "ft_langs=[es]", "eval_langs=[en,es]", "seeds=[0,1]",
    "finetune.num_workers=1", "finetune.cpus_per_worker=1", "finetune.use_gpu=true", "finetune.dist_backend=gloo",
    "sweep.max_concurrent=auto", "generate.backend=transformers",
    "evaluate.num_gpus=1", "evaluate.num_cpus=1",
]


def main(workdir: Path, out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # RAY_TMPDIR (set by the test) keeps this cluster's files and address file out of /tmp/ray.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    try:
        gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        from pipelines.cells import cell_dir, study_cells
        from pipelines.presets import load_config
        from pipelines.run import run_study

        cfg = load_config("smoke", [f"workdir={workdir}", f"ray.address={cluster.address}", *OVERRIDES])
        t0 = time.time()
        result = run_study(cfg)
        wall = time.time() - t0
        nodes = {n["NodeID"]: {"CPU": n["Resources"].get("CPU", 0), "GPU": n["Resources"].get("GPU", 0)}
                 for n in ray.nodes() if n["Alive"]}
        manifests = {r["cell_id"]: r for r in result.results}
        ray.shutdown()  # the in-process evaluation below runs without any Ray

        from cluster.storage import read_manifest
        from pipelines.cells import checkpoint_dir
        from pipelines.evaluate import evaluate_cell
        from pipelines.layout import Workdir
        from pipelines.sweep.trial import cell_weights

        wd = Workdir(workdir)
        ds_hash = result.datasets_path.name  # datasets/<datasets hash>
        in_process, train = {}, {}
        for c in study_cells(cfg):
            weights, _ = cell_weights(cfg, c, wd, ds_hash)
            ev = evaluate_cell(cfg, c, weights, result.datasets_path, workdir / "inprocess" / c.id)
            in_process[c.id] = ev.metrics
            if not c.is_base:
                train[c.id] = read_manifest(checkpoint_dir(wd, cfg, c, ds_hash))["workers"]
            assert cell_dir(wd, cfg, c, ds_hash).name == manifests[c.id]["cell_hash"]
        out.write_text(json.dumps({
            "nodes": nodes, "gpu_node_ids": [n.node_id for n in gpu_nodes], "wall_s": wall,
            "stages": result.stages,
            "cells": {cid: {"metrics": m["metrics"], "evaluated_on": m["evaluated_on"], "model": m["cell"]["model"],
                            "is_base": m["cell"]["ft_lang"] == "base"} for cid, m in manifests.items()},
            "train_workers": train, "in_process": in_process,
        }, indent=2, default=str))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
