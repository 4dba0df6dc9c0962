"""Finished cells judged by another version of the study's judge than the one installed. A cell's hash names
what its answers depend on, not the judge's code, so a newer judge (a fix to what it calls a non-answer,
say) would leave a finished study's labels and every figure drawn from them as the old judge had them.
The sweep evaluates such cells again instead: their fine-tunes (checkpoints/) and their answers (the cell's
generations/) are kept and reused, so only the judging and the measures after it run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from cluster.storage import MANIFEST, read_manifest
from pipelines.cells import Cell, Study
from pipelines.evaluate.judges import installed_version

log = logging.getLogger(__name__)
JUDGED = ("judged.parquet", "judged_safe.parquet")
UNKNOWN = "unknown"  # answers judged before the labels carried the judge's version


@dataclass(frozen=True)
class Stale:
    cell: Cell
    judged_with: tuple[str, ...]  # the versions its stored labels carry
    installed: str


def judged_versions(cell_dir: Path) -> set[str]:
    """The judge versions a finished cell's stored labels carry."""
    out: set[str] = set()
    for name in JUDGED:
        path = cell_dir / name
        if not path.exists():
            continue
        if "judge_version" not in pl.read_parquet_schema(path):
            out.add(UNKNOWN)
            continue
        out |= {str(v) for v in pl.read_parquet(path, columns=["judge_version"])["judge_version"].unique()}
    return out


def stale_cells(study: Study) -> list[Stale]:
    """The study's finished cells whose labels are not all the installed judge's; none for a remote judge
    (its version is the service's, known only when it answers)."""
    now = installed_version(study.cfg.judge.name)
    if now is None:
        return []
    out = []
    for cell in study.cells():
        d = study.cell_dir(cell)
        if read_manifest(d) is not None and (then := judged_versions(d)) and then != {now}:
            out.append(Stale(cell, tuple(sorted(then)), now))
    return out


def check_judgments(study: Study, rejudge: bool) -> list[Stale]:
    """Finds the stale cells; with `rejudge`, removes their manifests so that the sweep evaluates them
    again (the manifest is written last, so a cell interrupted while re-judged is simply re-judged again),
    else warns that their figures are the old judge's."""
    stale = stale_cells(study)
    if not stale:
        return []
    name = study.cfg.judge.name
    what = "; ".join(f"{s.cell.id} (version {', '.join(s.judged_with)})" for s in stale)
    if rejudge:
        for s in stale:
            (study.cell_dir(s.cell) / MANIFEST).unlink(missing_ok=True)
        log.warning("%d finished cell(s) were judged by an earlier %s than the installed version %s: %s. Judging "
                    "them again from their stored answers (no fine-tuning, no generating).", len(stale), name,
                    stale[0].installed, what)
    else:
        log.warning("%d finished cell(s) were judged by an earlier %s than the installed version %s: %s. Their "
                    "labels and figures stay the old judge's (--no-rejudge); run without it to judge them again.",
                    len(stale), name, stale[0].installed, what)
    return stale
