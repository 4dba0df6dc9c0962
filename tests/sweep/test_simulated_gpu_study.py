"""A paper-shaped study on a simulated GPU cluster (issue #17, point 6): a GPU-less head and two nodes that
advertise one logical GPU each (simulated_gpu_driver.py). Asserts where each stage ran — training and
evaluation workers only on GPU nodes, each holding a GPU, no two holders of one logical GPU at the same
time — that each base model was loaded once by its evaluation worker and served every adapter of that
model, and that every cell's metrics equal those of the same evaluation run in-process without Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sweep_support import run_driver, tail

pytestmark = pytest.mark.e2e

# How a cell ran, not what it measured.
NOT_COMPARED = ("time/", "generate/answers_per_s")


def _holders(got: dict) -> list[tuple[str, str, float, float, str]]:
    """(node, GPU id, start, end, who) of every process that held a GPU."""
    out = []
    for cid, workers in got["train_workers"].items():
        for w in workers:
            out += [(w["node_id"], g, w["started"], w["finished"], f"train {cid} rank {w['rank']}") for g in w["gpu_ids"]]
    for cid, c in got["cells"].items():
        e = c["evaluated_on"]
        out += [(e["node_id"], g, e["started"], e["finished"], f"evaluate {cid}") for g in e["gpu_ids"]]
    return out


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory, require_tool) -> dict:
    require_tool("apertium")
    tmp = tmp_path_factory.mktemp("simgpu")
    out, log = tmp / "out.json", tmp / "driver.log"
    rc = run_driver(Path(__file__).with_name("simulated_gpu_driver.py"), [str(tmp / "work"), str(out)], log, timeout=900)
    assert rc == 0, tail(log, 8000)
    return json.loads(out.read_text())


def test_gpu_work_ran_on_gpu_nodes_holding_distinct_gpus(simulated: dict) -> None:
    got = simulated
    gpu_nodes = set(got["gpu_node_ids"])
    assert len(got["nodes"]) == 3 and sum(n["GPU"] == 0 for n in got["nodes"].values()) == 1
    # Every fine-tuned cell trained in one worker, on a GPU node, holding one GPU (torch saw none: CPU).
    assert len(got["train_workers"]) == 4
    for cid, workers in got["train_workers"].items():
        assert len(workers) == 1, cid
        assert workers[0]["node_id"] in gpu_nodes and len(workers[0]["gpu_ids"]) == 1 and not workers[0]["on_gpu"]
    # Every cell was evaluated in a worker on a GPU node holding one GPU, never in a 0-GPU trial.
    for cid, c in got["cells"].items():
        e = c["evaluated_on"]
        assert e["node_id"] in gpu_nodes and len(e["gpu_ids"]) == 1, (cid, e)
    # Both GPU nodes did work (two cells trained at once; the two models' evaluations side by side).
    assert {w[0]["node_id"] for w in got["train_workers"].values()} == gpu_nodes
    # No two holders of the same logical GPU overlapped in time.
    holders = sorted(_holders(got), key=lambda h: (h[0], h[1], h[2]))
    for a, b in zip(holders, holders[1:], strict=False):
        if (a[0], a[1]) == (b[0], b[1]):
            assert a[3] <= b[2], f"{a[4]} and {b[4]} held GPU {a[1]} of node {a[0][:8]} at the same time"


def test_one_evaluation_worker_per_model_loaded_it_once_for_every_adapter(simulated: dict) -> None:
    by_model: dict[str, list[dict]] = {}
    for c in simulated["cells"].values():
        by_model.setdefault(c["model"], []).append(c)
    assert set(by_model) == {"tiny-llama3", "tiny-qwen3"}
    workers = {}
    for model, cells in by_model.items():
        assert len(cells) == 3  # base + es x 2 seeds
        places = {(c["evaluated_on"]["node_id"], c["evaluated_on"]["worker_id"], c["evaluated_on"]["pid"]) for c in cells}
        assert len(places) == 1, f"{model} was evaluated by {len(places)} workers"
        workers[model] = places.pop()
        loads = [c["evaluated_on"]["loads"] for c in cells]
        # The last cell's record: the worker had loaded this model's base once, and nothing else.
        assert max(loads, key=lambda x: sum(x.values())) == {next(iter(loads[-1])): 1}
        assert all(sum(x.values()) == 1 for x in loads)
    assert workers["tiny-llama3"] != workers["tiny-qwen3"]  # one worker per model, released between


def test_metrics_equal_the_in_process_evaluation(simulated: dict) -> None:
    for cid, c in simulated["cells"].items():
        ours = {k: v for k, v in c["metrics"].items() if not k.startswith(NOT_COMPARED)
                and not k.startswith(("train/",))}
        ref = {k: v for k, v in simulated["in_process"][cid].items() if not k.startswith(NOT_COMPARED)}
        assert set(ours) == set(ref), (cid, set(ours) ^ set(ref))
        for k, v in ref.items():
            assert math.isclose(ours[k], v, rel_tol=1e-6, abs_tol=1e-9), (cid, k, ours[k], v)
    # Non-trivial: the fine-tunes moved the models (drift, perplexity differ from the base cell's).
    base = simulated["cells"]["tiny-qwen3__base"]["metrics"]
    tuned = simulated["cells"]["tiny-qwen3__es__s0__e1"]["metrics"]
    assert tuned["capability/ppl_wikitext2"] != base["capability/ppl_wikitext2"]
    assert simulated["cells"]["tiny-qwen3__es__s0__e1"]["metrics"] != simulated["cells"]["tiny-qwen3__es__s1__e1"]["metrics"]
