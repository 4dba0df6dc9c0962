"""The evaluation stage: after the training grid, one Ray task per base model evaluates all of that
model's pending cells (the base cell first) in a worker that reserves what evaluation uses
(``evaluate.num_gpus``, ``num_cpus``, ``memory_gb``) as Ray resources — never inside a 0.01-CPU Tune
trial, and never beside a training worker (the grid has finished). The worker loads the base model once
and serves every cell's adapter from that copy: one vLLM engine per base model with a LoRARequest per
cell on a GPU, peft adapters switched on one transformers copy on CPU (pipelines/evaluate/session.py).
Each task runs in a fresh worker process (max_calls=1), so a model's engine and weights are released
before the next model's task takes the GPU.

A task that fails leaves the cells it finished done (each has its manifest); a rerun evaluates the rest."""

from __future__ import annotations

import logging
from typing import Any

from pipelines.cells import Cell, Study
from pipelines.config import StudyConfig
from pipelines.errors import SweepError
from pipelines.evaluate import EvalSession
from pipelines.evaluate.judges import make_judge
from pipelines.registry import import_modules
from pipelines.sweep.cell import finish_cell
from pipelines.sweep.resources import check_cluster, evaluation_needs

log = logging.getLogger(__name__)

# vLLM starts its engine core in a child process and switches from fork to spawn by itself only inside Ray
# actors (vLLM 0.33); an evaluation worker is a task, where a forked child inherits the
# worker's Ray and CUDA state. Set for the task's process before it starts, so any vLLM it imports sees it.
WORKER_ENV = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


def worker_resources(cfg: StudyConfig) -> dict[str, Any]:
    """The Ray resources of one evaluation worker as ray.remote options (resources.evaluation_needs in
    node resource keys: the one place they are read from the config)."""
    keys = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
    return {keys[k]: int(v) if k == "memory" else v for k, v in evaluation_needs(cfg).items()}


def task_options(cfg: StudyConfig) -> dict[str, Any]:
    """ray.remote options of one evaluation task: its resources, a fresh process per task (max_calls=1:
    a model's engine and weights go with it), the sweep's retries, and WORKER_ENV."""
    return {**worker_resources(cfg), "max_calls": 1, "max_retries": cfg.sweep.max_failures,
            "runtime_env": {"env_vars": dict(WORKER_ENV)}}


def evaluation_task(cfg: StudyConfig, name: str) -> Any:
    """evaluate_model as a Ray task with task_options (max_calls is given to ray.remote: .options refuses it)."""
    import ray

    opts = task_options(cfg)
    return ray.remote(max_calls=opts.pop("max_calls"))(evaluate_model).options(**opts, name=name)


def by_model(cells: list[Cell]) -> dict[str, list[Cell]]:
    """Cells grouped by base model in study order, each group's base cell first (its answers are the
    reference the others are compared with, and a partial run then has it)."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.model, []).append(c)
    return {m: sorted(cs, key=lambda c: not c.is_base) for m, cs in groups.items()}


def evaluate_model(study_json: dict[str, Any], cells: list[dict[str, Any]]) -> list[str]:
    """In the evaluation worker: every given cell of one base model, with one session (one model copy,
    the judges made once). Returns the ids of the cells it finished."""
    study = Study.from_json(study_json)
    import_modules(study.cfg.import_modules)  # the user's modules register their components in this worker too
    session = EvalSession(study.cfg.generate.threads)
    done = []
    try:
        for c in cells:
            cell = Cell(**c)
            finish_cell(study, cell, session)
            done.append(cell.id)
    finally:
        session.close()
    return done


def run_evaluation(study: Study, cells: list[Cell]) -> None:
    """One evaluation task per base model, all submitted at once: Ray runs as many side by side as the
    cluster holds workers of ``worker_resources``."""
    import ray

    if not cells:
        return
    cfg = study.cfg
    groups = by_model(cells)
    check_cluster(cfg, train=False)  # a worker no node can hold would wait forever
    # A judge that is a service (the Serve application other teams call) is up before any worker asks.
    for name, options in ((cfg.judge.name, cfg.judge.options), (cfg.judge.second, cfg.judge.second_options)):
        if name:
            make_judge(name, **options).prepare()
    log.info("evaluation: %d cell(s) of %d model(s), one worker per model holding %s", len(cells), len(groups),
             ", ".join(f"{k}={v}" for k, v in worker_resources(cfg).items()))
    refs = {evaluation_task(cfg, f"evaluate-{model}").remote(
                study.to_json(), [c.to_dict() for c in cs]): model for model, cs in groups.items()}
    failed: list[str] = []
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        model = refs[ready[0]]
        try:
            ids = ray.get(ready[0])
            log.info("evaluated %d cell(s) of %s", len(ids), model)
        except Exception as exc:  # a worker's error: the other models' workers carry on
            log.error("evaluating %s failed: %s", model, _first_line(exc))
            failed.append(model)
    if failed:
        raise SweepError(f"evaluation failed for model(s) {', '.join(failed)}; see {study.wd.logs()} for the "
                         "worker's error, then rerun with --resume (finished cells are kept)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
