"""Finished cells judged by another version of the study's judge, or of its second judge, than the one
installed. A cell's hash names what its answers depend on, not the judge's code, so a newer judge (a fix to
what it calls a non-answer, say) would leave a finished study's labels and every figure drawn from them as
the old judge had them.
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
class Old:
    judge: str  # the configured judge's name
    judged_with: tuple[str, ...]  # the versions its stored labels carry
    installed: str

    def __str__(self) -> str:
        return f"{self.judge} version {', '.join(self.judged_with)}, installed {self.installed}"


@dataclass(frozen=True)
class Stale:
    cell: Cell
    old: tuple[Old, ...]  # each of the cell's judges (first, second) whose labels are not the installed version's


def judged_versions(cell_dir: Path, which: str = "judge") -> set[str]:
    """The versions of a finished cell's stored labels by its first judge (`which="judge"`) or its second
    ("judge2"). Labels without a version (written before they carried one) are UNKNOWN."""
    out: set[str] = set()
    for name in JUDGED:
        path = cell_dir / name
        if not path.exists():
            continue
        schema = pl.read_parquet_schema(path)
        if which == "judge2" and "outcome2" not in schema:
            continue  # no second judge's labels here
        if (column := f"{which}_version") not in schema:
            out.add(UNKNOWN)
            continue
        out |= {str(v) for v in pl.read_parquet(path, columns=[column])[column].unique()}
    return out


def stale_cells(study: Study) -> list[Stale]:
    """The study's finished cells whose labels, by its judge or its second judge, are not all the installed
    version's; a remote judge is never stale (its version is the service's, known only when it answers)."""
    judges = [("judge", study.cfg.judge.name), *([("judge2", study.cfg.judge.second)] if study.cfg.judge.second else [])]
    installed = [(which, name, now) for which, name in judges if (now := installed_version(name)) is not None]
    out = []
    for cell in study.cells():
        d = study.cell_dir(cell)
        if read_manifest(d) is None:
            continue
        old = tuple(Old(name, tuple(sorted(then)), now) for which, name, now in installed
                    if (then := judged_versions(d, which)) and then != {now})
        if old:
            out.append(Stale(cell, old))
    return out


def describe(stale: list[Stale]) -> str:
    """What the stale cells' labels are, and which cells: "trained-e5 version 6, installed 7: <cell>, <cell>"
    (cells whose labels are alike named together: after a judge change that is every cell of a study)."""
    groups: dict[tuple[Old, ...], list[str]] = {}
    for s in stale:
        groups.setdefault(s.old, []).append(s.cell.id)
    return "; ".join(f"{'; '.join(map(str, old))}: {', '.join(cells)}" for old, cells in groups.items())


def check_judgments(study: Study, rejudge: bool) -> list[Stale]:
    """Finds the stale cells; with `rejudge`, removes their manifests so that the sweep evaluates them
    again (the manifest is written last, so a cell interrupted while re-judged is simply re-judged again),
    else warns that their figures are the old judge's."""
    stale = stale_cells(study)
    if not stale:
        return []
    if rejudge:
        for s in stale:
            (study.cell_dir(s.cell) / MANIFEST).unlink(missing_ok=True)
        log.warning("%d finished cell(s) carry labels of an earlier judge than the installed one: %s. Judging "
                    "them again from their stored answers (no fine-tuning, no generating).", len(stale), describe(stale))
    else:
        log.warning("%d finished cell(s) carry labels of an earlier judge than the installed one: %s. Their "
                    "labels and figures stay the old judge's (--no-rejudge); run without it to judge them again.",
                    len(stale), describe(stale))
    return stale
