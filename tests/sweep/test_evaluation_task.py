"""Issue #29, point 8: vLLM switches its engine process to spawn only inside Ray actors, and the
evaluation worker is a Ray task. The study's own evaluation stage (run_evaluation, on the session's real
cluster) starts its task with VLLM_WORKER_MULTIPROC_METHOD=spawn: read inside the task, from a stand-in
for evaluate_model that records its environment instead of evaluating."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ray.cloudpickle

from cluster.tracking import Tracking
from pipelines.cells import Study, study_cells
from pipelines.layout import Workdir
from pipelines.presets import load_config
from pipelines.sweep import evaluation

# The stand-in travels by value: workers cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def record_environment(study_json: dict, cells: list[dict]) -> list[str]:
    """In the evaluation task: what vLLM would read there, and whether this is an actor (it is not)."""
    import ray

    ctx = ray.get_runtime_context()
    out = {"VLLM_WORKER_MULTIPROC_METHOD": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"),
           "actor": ctx.get_actor_id() is not None, "task": ctx.get_task_id() is not None, "pid": os.getpid(),
           "cells": [c["model"] for c in cells]}
    (Path(study_json["workdir"]) / f"env-{os.getpid()}.json").write_text(json.dumps(out))
    return []


def test_the_evaluation_task_runs_with_vllm_set_to_spawn(ray_cluster, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(evaluation, "evaluate_model", record_environment)
    cfg = load_config("smoke", [f"workdir={tmp_path}"])
    study = Study(cfg, Workdir(tmp_path), "h", "s", tmp_path, Tracking("file:///x", "0", None))
    evaluation.run_evaluation(study, study_cells(cfg))
    seen = [json.loads(p.read_text()) for p in tmp_path.glob("env-*.json")]
    assert len(seen) == len({c.model for c in study_cells(cfg)}) >= 1
    for env in seen:
        assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn", env
        assert env["task"] and not env["actor"]  # where vLLM would not switch by itself
    assert os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") is None  # set for the task, not the driver
