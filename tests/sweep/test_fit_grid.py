"""The sweep's Tune layer on the session's real Ray cluster, with a trivial trainable that records each
run: an interrupted grid is restored (finished trials are not run again, errored ones are), and a Tune
state that a killed driver left half-written or unreadable falls back to a new grid of the configs given."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pipelines.sweep import fit_grid


def _recording_trainable(marks: Path, fail_first: str | None = None) -> Any:
    """A function trainable (defined here so Ray pickles it by value) that appends one line per run to
    marks/<name> and fails the first run of `fail_first`."""
    from ray import tune

    def trainable(config: dict[str, Any]) -> None:
        name = config["cell"]["name"]
        path = marks / name
        runs = (path.read_text() if path.exists() else "") + "run\n"
        path.write_text(runs)
        if name == fail_first and runs.count("run") == 1:
            raise RuntimeError(f"{name}: the first run fails")
        tune.report({"done": 1})

    return tune.with_resources(trainable, {"cpu": 0.01})


def _runs(marks: Path) -> dict[str, int]:
    return {p.name: p.read_text().count("run") for p in sorted(marks.iterdir())}


def _fit(tmp_path: Path, trainable: Any, names: list[str], resume: bool = True) -> Any:
    return fit_grid(trainable, [{"name": n} for n in names], storage=tmp_path / "tune", name="grid",
                    max_concurrent=2, resume=resume, trial_name=lambda t: t.config["cell"]["name"])


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    (tmp_path / "marks").mkdir()
    return tmp_path / "marks"


def test_interrupted_grid_is_restored_and_finished_trials_are_not_rerun(ray_cluster, tmp_path, marks, caplog):
    caplog.set_level(logging.INFO, logger="pipelines.sweep")
    first = _fit(tmp_path, _recording_trainable(marks, fail_first="b"), ["a", "b", "c"])
    assert sorted(r.config["cell"]["name"] for r in first if r.error is not None) == ["b"]
    # Deterministic trial directories: the cell's name.
    assert {"a", "b", "c"} <= {p.name for p in (tmp_path / "tune" / "grid").iterdir()}

    again = _fit(tmp_path, _recording_trainable(marks, fail_first="b"), ["b"])
    assert "resuming the interrupted Tune grid" in caplog.text
    assert all(r.error is None for r in again) and len(again) == 3  # the restored grid, all three trials
    assert _runs(marks) == {"a": 1, "b": 2, "c": 1}


def test_partial_tune_state_falls_back_to_a_new_grid(ray_cluster, tmp_path, marks, caplog):
    from ray import tune

    caplog.set_level(logging.INFO, logger="pipelines.sweep")
    trainable = _recording_trainable(marks)
    # What a driver killed before Tune's first save leaves: tuner.pkl (written by Tuner()) and no
    # experiment state. Tuner.can_restore says yes; Tuner.restore(...).fit() would fail.
    tune.Tuner(trainable, param_space={"cell": tune.grid_search([{"name": "a"}])},
               run_config=tune.RunConfig(name="grid", storage_path=str(tmp_path / "tune")))
    assert tune.Tuner.can_restore(str(tmp_path / "tune" / "grid"))

    grid = _fit(tmp_path, trainable, ["a", "b"])
    assert "is partial" in caplog.text and "starting a new Tune grid" in caplog.text
    assert all(r.error is None for r in grid) and len(grid) == 2
    assert _runs(marks) == {"a": 1, "b": 1}
    assert list((tmp_path / "tune").glob("grid.stale-*"))  # the old state is kept aside, not mixed in


def test_unreadable_tune_state_falls_back_to_a_new_grid(ray_cluster, tmp_path, marks, caplog):
    caplog.set_level(logging.INFO, logger="pipelines.sweep")
    trainable = _recording_trainable(marks)
    _fit(tmp_path, trainable, ["a"])
    for state in (tmp_path / "tune" / "grid").glob("experiment_state-*.json"):
        state.write_text(state.read_text()[:40])  # cut short, as by a kill while it was written
    grid = _fit(tmp_path, trainable, ["b"])
    assert "unreadable" in caplog.text and "starting a new Tune grid" in caplog.text
    assert [r.config["cell"]["name"] for r in grid] == ["b"]
    assert _runs(marks) == {"a": 1, "b": 1}


def test_no_resume_starts_a_new_grid(ray_cluster, tmp_path, marks):
    trainable = _recording_trainable(marks)
    _fit(tmp_path, trainable, ["a"])
    grid = _fit(tmp_path, trainable, ["b"], resume=False)
    assert [r.config["cell"]["name"] for r in grid] == ["b"]
    assert _runs(marks) == {"a": 1, "b": 1}
