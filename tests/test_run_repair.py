"""`safedrift run` on a finished study with one damaged output: it redoes that output, names it, and
ends with the same numbers as the undamaged run (issue 30, item 1: it used to crash with KeyError
'compliance' after printing "incomplete, redoing it", so only `safedrift sweep` could repair it)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.storage import write_manifest
from pipelines.cells import cell_dir, study_cells
from pipelines.presets import load_config
from pipelines.run import StudyRun, finished

REPO = Path(__file__).resolve().parent.parent


def _finished_study(workdir: Path) -> StudyRun:
    """The smoke study's outputs as manifests over small data files, without running anything."""
    from pipelines.cells import Study
    from pipelines.layout import Workdir

    cfg = load_config("smoke", [f"workdir={workdir}"])
    wd = Workdir.open(cfg.resolved_workdir())
    run = StudyRun(Study.of(cfg, wd), None, "sqlite:///unused", lambda kind, info: None)
    ds_hash = run.study.ds_hash
    dirs = [cell_dir(wd, cfg, c, ds_hash) for c in study_cells(cfg)]
    for d in [*dirs, wd.datasets(ds_hash), run.sweep_dir, run.report_dir]:
        d.mkdir(parents=True, exist_ok=True)
        (d / "judged.parquet").write_bytes(b"x" * 1000)
    for d, c in zip(dirs, study_cells(cfg), strict=True):
        write_manifest(d, cell_id=c.id, metrics={"compliance": {"en": 0.5}})
    for d in (wd.datasets(ds_hash), run.report_dir):
        write_manifest(d)
    write_manifest(run.sweep_dir, parent_run_id="p1")
    return run


def test_finished_study_is_reused_when_whole(tmp_path: Path) -> None:
    run = _finished_study(tmp_path / "wd")
    done = finished(run)
    assert done is not None and done.parent_run_id == "p1"
    assert [r["cell_id"] for r in done.results] == [c.id for c in study_cells(run.study.cfg)]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_cell_makes_the_study_unfinished_and_is_named(tmp_path: Path, damage: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    run = _finished_study(tmp_path / "wd")
    cell = run.study.cells()[-1]
    judged = run.study.cell_dir(cell) / "judged.parquet"
    if damage == "truncate":
        judged.write_bytes(b"x" * 10)
    else:
        judged.unlink()
    with caplog.at_level(logging.WARNING):
        assert finished(run) is None  # was: a result with {} for that cell, then KeyError downstream
    assert f"cell {cell.id}" in caplog.text and "redoing it" in caplog.text


def test_damaged_datasets_make_the_study_unfinished(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = _finished_study(tmp_path / "wd")
    (run.study.wd.datasets(run.study.ds_hash) / "judged.parquet").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert finished(run) is None
    assert "the translated datasets" in caplog.text


@pytest.mark.e2e
def test_run_repairs_a_damaged_cell_of_a_finished_study(smoke_study, require_tool, tmp_path: Path) -> None:
    """The real thing: a copy of the finished smoke workdir, one cell's judged.parquet truncated, then
    `safedrift run` in its own process. It must succeed, name the cell, and give the original numbers."""
    from pipelines.run import run_study

    require_tool("apertium")
    original = smoke_study["result"]
    workdir = tmp_path / "smoke-copy"
    shutil.copytree(original.workdir, workdir, ignore=shutil.ignore_patterns(".safedrift.lock"))
    cfg = load_config("smoke", [f"workdir={workdir}"])
    _own_sweep_record(cfg, Path(original.workdir), workdir)
    victim = next(c for c in study_cells(cfg) if not c.is_base)
    judged = cell_dir(workdir, cfg, victim, _ds_hash(cfg)) / "judged.parquet"
    judged.write_bytes(judged.read_bytes()[: judged.stat().st_size // 2])

    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "-c", "smoke", f"workdir={workdir}"],
                          capture_output=True, text=True, timeout=1500, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "KeyError" not in out
    assert f"cell {victim.id}" in out and "redoing it" in out
    again = run_study(cfg)  # now whole: every stage reused, read from the manifests
    assert all(s["reused"] for s in again.stages.values())
    for new, old in zip(again.results, original.results, strict=True):
        differ = {k for k in _measured(old) | _measured(new) if _measured(new).get(k) != _measured(old).get(k)}
        assert not differ, f"cell {old['cell_id']}: {sorted(differ)}"


def _measured(manifest: dict) -> dict:
    """A cell's measurements: not how long it took (time/*) nor how fast it went (*_per_s)."""
    return {k: v for k, v in manifest["metrics"].items() if not k.startswith("time/") and not k.endswith("_per_s")}


def _own_sweep_record(cfg, original: Path, copy: Path) -> None:  # type: ignore[no-untyped-def]
    """A sweep record is kept per tracking store, and the copy's store (its own mlflow.db) has another
    name: move the copied record there, so the copy reads as the finished study it is."""
    from cluster.tracking import tracking_uri
    from pipelines.cells import study_hashes
    from pipelines.layout import Workdir

    study_hash = study_hashes(cfg)[1]
    src = Workdir(original).sweep(study_hash, tracking_uri(Workdir(original).mlflow_db()))
    dst = Workdir(copy).sweep(study_hash, tracking_uri(Workdir(copy).mlflow_db()))
    (copy / src.relative_to(original)).rename(dst)


def _ds_hash(cfg) -> str:  # type: ignore[no-untyped-def]
    from pipelines.cells import study_hashes

    return study_hashes(cfg)[0]
