"""Progress a person can read, across processes: the stage a cell is in and how far it got, written by
whichever process does the work (a Tune trial, a Ray Train worker) to a small JSON file on the shared
workdir, and read by the driver's console view. Writes are best effort (a progress file never fails a
cell) and cheap (no fsync: a lost update only delays the view by one step)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster.storage import write_text_atomic

log = logging.getLogger(__name__)

_local = threading.local()


@contextlib.contextmanager
def for_cell(path: Path | str | None, cell_id: str) -> Iterator[None]:
    """Within this block, update() writes this cell's progress to `path` (None: updates are dropped)."""
    prev = getattr(_local, "sink", None)
    _local.sink = (Path(path), cell_id) if path else None
    try:
        yield
    finally:
        _local.sink = prev


def update(stage: str, done: int | None = None, total: int | None = None) -> None:
    sink = getattr(_local, "sink", None)
    if sink is None:
        return
    path, cell_id = sink
    record = {"cell": cell_id, "stage": stage, "done": done, "total": total, "updated": time.time()}
    try:
        write_text_atomic(path, json.dumps(record), fsync=False)
    except OSError as exc:  # progress is a courtesy: never fail a cell over it
        log.debug("could not write progress to %s: %s", path, exc)


def read_all(directory: Path) -> list[dict[str, Any]]:
    """Every cell's latest progress record, newest first."""
    out = []
    for p in directory.glob("*.json") if directory.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(p.read_text()))
    return sorted(out, key=lambda r: -float(r.get("updated", 0)))
