"""The console a person reads: one progress view and the paths they need, while Ray, Tune and Train
output goes to the log file in the workdir (checked on the session's real smoke run)."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest

from cluster import progress
from cluster.console import StudyConsole


@pytest.mark.e2e
def test_smoke_run_console_is_a_progress_view_and_paths(smoke_study) -> None:
    out, err = smoke_study["stdout"], smoke_study["stderr"]
    res = smoke_study["result"]
    log = Path(re.search(r"^log: (\S+)$", out, re.M).group(1))
    assert log.parent == res.workdir / "logs" and log.stat().st_size > 0
    assert re.search(r"stage sweep · cells \d/3", out) and "cells 3/3" in out
    assert f"report: {res.report_path / 'report.html'}" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{res.workdir / 'mlflow.db'}" in out
    # What used to flood the console is in the log instead.
    noisy = ("RayTrainWorker", "Trial status", "TrainingReport", "FutureWarning", "deepspeed", "Loading weights")
    for text in noisy:
        assert text not in out and text not in err, text
    assert "RayTrainWorker" in log.read_text() or "ray" in log.read_text().lower()
    assert len(out.splitlines()) < 60


def test_progress_records_are_read_back(tmp_path: Path) -> None:
    with progress.for_cell(tmp_path / "c1.json", "cell-1"):
        progress.update("finetune step", 3, 8)
    progress.update("ignored", 1, 1)  # no cell bound: dropped
    (rec,) = progress.read_all(tmp_path)
    assert (rec["cell"], rec["stage"], rec["done"], rec["total"]) == ("cell-1", "finetune step", 3, 8)


def test_console_sends_output_to_the_log_and_shows_progress(tmp_path: Path) -> None:
    import logging
    import os

    term = io.StringIO()
    cells = [tmp_path / "cells" / f"c{i}" for i in range(2)]
    # As transformers configures its logger outside CI once anything has logged through it: a stderr
    # handler of its own and no propagation. The console must still route its records to the log.
    lib = logging.getLogger("transformers")
    own = logging.StreamHandler(io.StringIO())
    before = (list(lib.handlers), lib.propagate)
    lib.handlers, lib.propagate = [own], False
    with StudyConsole(tmp_path / "logs", "study", terminal=term, refresh_s=0.05) as console:
        console.on_event("study", {"cell_dirs": cells, "progress_dir": tmp_path / "progress"})
        console.on_event("stage", {"name": "sweep"})
        os.write(1, b"noise from a worker process\n")  # fd-level output, as Ray's log forwarding does
        print("a library's print")
        logging.getLogger("transformers.modeling_utils").warning("a library warning")
        logging.getLogger("pipelines.sweep").warning("a cell failed: see its log")
        cells[0].mkdir(parents=True)
        (cells[0] / "manifest.json").write_text("{}")
        with progress.for_cell(tmp_path / "progress" / "c1.json", "c1"):
            progress.update("generate", 5, 10)
        time.sleep(0.3)
    shown = term.getvalue()
    log = console.log_path.read_text()
    assert (lib.handlers, lib.propagate) == ([own], False)  # the library's own set-up is back afterwards
    lib.handlers, lib.propagate = before
    assert "noise from a worker process" in log and "a library's print" in log and "a library warning" in log
    assert own.stream.getvalue() == ""  # not to the library's own stream
    assert "noise" not in shown and "library" not in shown and "library warning" not in shown
    assert "warning: a cell failed: see its log" in shown  # safedrift's own warnings reach the person
    assert f"log: {console.log_path}" in shown
    assert "cells 1/2" in shown and "c1: generate 5/10" in shown and "ETA" in shown


def test_eta_follows_the_pace_between_completed_cells(tmp_path: Path) -> None:
    # The grid trains every fine-tune first: 30 minutes pass before the first cell completes, then the
    # evaluations complete one every 150 s. The ETA reads that pace, not 30 minutes a cell.
    from cluster.console import State

    st = State("t", cell_manifests=[tmp_path / f"c{i}" for i in range(10)], stage="sweep", sweep_started=0.0)
    assert st.eta(0, now=600.0) is None
    assert st.eta(1, now=1800.0) == 1800.0 * 9  # one completion: nothing better to go on
    assert st.eta(2, now=1950.0) == 150.0 * 8
    assert st.eta(2, now=2000.0) == 150.0 * 8 - 50.0  # the running cell's 50 s are spent
    assert st.eta(3, now=2100.0) == 150.0 * 7
