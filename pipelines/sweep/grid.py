"""Ray Tune's grid: one trial per config, no early stopping, deterministic trial names, and restoring an
interrupted grid when Tune left a usable state (else a new grid of what is still pending)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.cells import Cell

log = logging.getLogger(__name__)


def cell_trial_name(trial: Any) -> str:
    # Deterministic trial names and directories (the cell id), so a restored grid finds its trials.
    return Cell(**trial.config["cell"]).id


def _restorable(path: Path) -> bool:
    """Whether Tune left a state at `path` that Tuner.restore can use. Tuner.can_restore only sees
    tuner.pkl, which Tune writes before the first trial; a driver killed before Tune's first
    experiment_state-*.json (or while one was being written) leaves a state that fails on restore."""
    from ray import tune

    if not tune.Tuner.can_restore(str(path)):
        log.info("no Tune state at %s", path)
        return False
    states = sorted(path.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        log.warning("Tune state at %s is partial (tuner.pkl but no experiment_state-*.json)", path)
        return False
    try:
        json.loads(states[-1].read_text())
    except (OSError, ValueError) as exc:
        log.warning("Tune state %s is unreadable (%s)", states[-1], exc)
        return False
    return True


def _set_aside(path: Path) -> None:
    # A new grid must not mix its trials with a stale experiment's; the old one is kept for its logs.
    if path.exists():
        stale = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(stale)
        log.info("set the old Tune state aside: %s", stale)


def fit_grid(trainable: Any, configs: list[dict[str, Any]], *, storage: Path, name: str, max_concurrent: int,
             max_failures: int = 0, resume: bool = True,
             trial_name: Callable[[Any], str] = cell_trial_name) -> Any:
    """One Tune trial per config (a grid, no early stopping); resumes an interrupted grid of the same name
    when Tune's state allows, else starts a new one. Returns Tune's ResultGrid."""
    from ray import tune

    path = storage / name
    if resume and _restorable(path):
        try:
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
            log.info("resuming the interrupted Tune grid at %s (its trials and concurrency)", path)
            return tuner.fit()
        except Exception as exc:  # e.g. a tuner.pkl from another Ray version: a new grid redoes nothing done
            log.warning("could not resume the Tune grid at %s (%s: %s); starting a new grid of %d pending cell(s)",
                        path, type(exc).__name__, exc, len(configs))
    elif resume:
        log.info("starting a new Tune grid of %d pending cell(s) at %s", len(configs), path)
    _set_aside(path)
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return tuner.fit()


