"""Finished cells that an earlier version of the judge labelled are found, named and, by default, handed
back to the sweep to be judged again (sweep/rejudge.py); without a manifest-level change nothing else is
touched. The end-to-end half (no fine-tuning or generating again) is in tests/test_smoke_e2e.py."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

from cluster.storage import read_manifest, write_manifest
from pipelines.cells import Study
from pipelines.evaluate.judges import installed_version
from pipelines.layout import Workdir
from pipelines.presets import load_config
from pipelines.sweep.rejudge import UNKNOWN, check_judgments, judged_versions, stale_cells


def _study(workdir: Path, versions: list[str | None], judge: str = "refusal-phrase",
           second: tuple[str, list[str | None]] | None = None) -> Study:
    """The smoke study with every cell finished, cell i's answers labelled by judge version versions[i]
    (None: labels written before they carried a version) and, with `second` = (name, versions), by a second
    judge of that name and version."""
    cfg = load_config("smoke", [f"workdir={workdir}", f"judge.name={judge}",
                                *([f"judge.second={second[0]}"] if second else [])])
    study = Study.of(cfg, Workdir.open(cfg.resolved_workdir()))
    for i, (cell, v) in enumerate(zip(study.cells(), versions, strict=True)):
        d = study.cell_dir(cell)
        d.mkdir(parents=True)
        frame = pl.DataFrame({"id": ["a", "b"], "outcome": ["refused", "complied"]})
        if v is not None:
            frame = frame.with_columns(judge_version=pl.lit(v))
        if second:
            frame = frame.with_columns(outcome2=pl.lit("refused"))
            if (v2 := second[1][i]) is not None:
                frame = frame.with_columns(judge2_version=pl.lit(v2))
        frame.write_parquet(d / "judged.parquet")
        write_manifest(d, cell_id=cell.id, metrics={})
    return study


def _n_cells(tmp_path: Path) -> int:
    cfg = load_config("smoke", [f"workdir={tmp_path / 'probe'}"])
    return len(Study.of(cfg, Workdir.open(cfg.resolved_workdir())).cells())


def test_cells_of_another_judge_version_are_named_and_judged_again(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    now = installed_version("refusal-phrase")
    n = _n_cells(tmp_path)
    versions = [now, "0", None, *[now] * (n - 3)]
    study = _study(tmp_path / "wd", versions)
    cells = study.cells()
    assert judged_versions(study.cell_dir(cells[1])) == {"0"} and judged_versions(study.cell_dir(cells[2])) == {UNKNOWN}
    stale = stale_cells(study)
    assert [s.cell.id for s in stale] == [cells[1].id, cells[2].id]
    assert [(o.judge, o.judged_with, o.installed) for o in stale[0].old] == [("refusal-phrase", ("0",), now)]

    with caplog.at_level(logging.WARNING):  # kept: the labels stay, and the log says they are old
        assert len(check_judgments(study, rejudge=False)) == 2
    assert all(read_manifest(study.cell_dir(c)) is not None for c in cells)
    assert cells[1].id in caplog.text and "--no-rejudge" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # judged again: only the stale cells lose their manifests
        check_judgments(study, rejudge=True)
    assert [read_manifest(study.cell_dir(c)) is None for c in cells] == [False, True, True, *[False] * (n - 3)]
    assert "Judging them again" in caplog.text
    assert (study.cell_dir(cells[1]) / "judged.parquet").exists()  # the answers stay for the sweep
    assert stale_cells(study) == []  # nothing finished is stale any more


def test_a_remote_judge_is_never_called_stale(tmp_path: Path) -> None:
    study = _study(tmp_path / "wd", ["0"] * _n_cells(tmp_path), judge="remote")
    assert installed_version("remote") is None
    assert stale_cells(study) == []


def test_labels_of_an_earlier_second_judge_are_stale_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The second judge's labels are figures of the report too (its agreement with the first): a cell whose
    second labels are another version's, or carry none, is judged again; the first judge's alone is not enough."""
    first, second = installed_version("refusal-phrase"), installed_version("trained-e5")
    n = _n_cells(tmp_path)
    study = _study(tmp_path / "wd", [first] * n, second=("trained-e5", [second, "0", None, *[second] * (n - 3)]))
    cells = study.cells()
    assert judged_versions(study.cell_dir(cells[1]), "judge2") == {"0"}
    assert judged_versions(study.cell_dir(cells[2]), "judge2") == {UNKNOWN}
    stale = stale_cells(study)
    assert [s.cell.id for s in stale] == [cells[1].id, cells[2].id]
    assert [(o.judge, o.judged_with, o.installed) for o in stale[0].old] == [("trained-e5", ("0",), second)]
    with caplog.at_level(logging.WARNING):
        check_judgments(study, rejudge=False)
    assert f"trained-e5 version 0, installed {second}: {cells[1].id}" in caplog.text
