"""Issue #29, point 1: on KubeRay the GPU group starts at 0 replicas and Ray 2.60 publishes no node
groups, so the live nodes are all a driver can see. The sweep (and an evaluation-only resume) must go
on with a warning there — its resource requests are what make the autoscaler add the GPU nodes — while a
cluster the run started itself, which cannot grow, still fails before any work (empty_gpu_group_driver.py:
a real autoscaler with a GPU group at 0 nodes). A joined cluster without an autoscaler still fails too
(test_sweep_resources.py::test_cli_reports_a_cell_that_cannot_fit)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sweep_support import run_driver, tail


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("emptygpu")
    out, log = tmp / "out.json", tmp / "driver.log"
    rc = run_driver(Path(__file__).with_name("empty_gpu_group_driver.py"), [str(out)], log, timeout=300)
    assert rc == 0, tail(log, 8000)
    return json.loads(out.read_text())


def test_a_joined_cluster_without_gpu_nodes_proceeds_with_a_warning(driven: dict) -> None:
    assert driven["cluster_config"] == "None"  # what KubeRay's clusters give on Ray 2.60
    joined = driven["joined"]
    assert "error" not in joined, joined["error"]
    # Every pending cell is submitted, so that its placement group asks the autoscaler for a GPU node.
    assert joined["concurrency"] == 6
    # plan_concurrency checks training and evaluation; the evaluation-only resume checks evaluation again.
    train, evaluate, resume = joined["warnings"]
    assert resume == evaluate
    assert "1 training worker(s) × 1 CPU + 1 GPU" in train and "publishes no node groups" in train
    assert "infra/base/raycluster.yaml" in train and "set finetune.use_gpu=false" in train
    assert "an evaluation worker needs CPU 1, GPU 1" in evaluate and "add GPU nodes" in evaluate


def test_work_submitted_before_the_gpu_node_runs_once_it_joins(driven: dict) -> None:
    task = driven["gpu_task"]
    assert driven["gpu_nodes_before"] == 0
    # The autoscaler added the GPU node because the task asked for it; the task ran there.
    assert task["node_id"] != driven["head_node_id"] and len(task["gpu_ids"]) == 1


def test_a_cluster_started_here_still_fails_naming_the_fix(driven: dict) -> None:
    here = driven["started_here"]
    assert "concurrency" not in here and not here["warnings"]
    assert "set finetune.use_gpu=false" in here["error"] and "add GPU nodes" in here["error"]


def test_translation_actors_ask_for_the_gpus_the_group_will_add(driven: dict) -> None:
    """Issue #29, point 4: NLLB actors got a GPU only if one was live when the job started."""
    assert driven["joined"]["translate"]["num_gpus"] == 1.0
    assert driven["joined"]["translate"]["concurrency"] >= 1
    # A cluster that cannot grow and has no GPU: NLLB on CPU, as before.
    assert driven["started_here"]["translate"]["num_gpus"] == 0.0



@pytest.mark.slow
@pytest.mark.e2e
def test_the_paper_shaped_study_scales_its_gpu_group_up_from_zero(tmp_path, require_tool) -> None:
    """The simulated GPU study (simulated_gpu_driver.py) on a cluster whose two GPU nodes do not exist
    when the study starts: the autoscaler adds them because the sweep, then the evaluation, ask; every
    cell trains and evaluates on them and measures what the same evaluation measures in-process."""
    require_tool("apertium")
    out, log = tmp_path / "out.json", tmp_path / "driver.log"
    rc = run_driver(Path(__file__).with_name("simulated_gpu_driver.py"),
                    [str(tmp_path / "work"), str(out), "--empty-gpu-group"], log, timeout=1200)
    assert rc == 0, tail(log, 8000)
    got = json.loads(out.read_text())
    assert got["gpus_at_start"] == 0 and 1 <= len(got["gpu_node_ids"]) <= 2
    gpu_nodes = set(got["gpu_node_ids"])
    assert len(got["train_workers"]) == 4 and len(got["cells"]) == 6
    for workers in got["train_workers"].values():
        assert workers[0]["node_id"] in gpu_nodes and len(workers[0]["gpu_ids"]) == 1
    for cid, c in got["cells"].items():
        assert c["evaluated_on"]["node_id"] in gpu_nodes and len(c["evaluated_on"]["gpu_ids"]) == 1, cid
        for key, value in got["in_process"][cid].items():
            if not key.startswith(("time/", "generate/answers_per_s")):
                assert math.isclose(c["metrics"][key], value, rel_tol=1e-6, abs_tol=1e-9), (cid, key)
