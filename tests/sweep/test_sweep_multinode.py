"""The sweep on a local multi-node Ray cluster with a shared storage_path (the workdir: one filesystem,
since both nodes are on this machine). The workdir is seeded with the session smoke study's data sets and
its base and es cells, so the grid has one cell to run: en, whose two 1.5-CPU training workers cannot
share a 2-CPU node. The driver runs in a subprocess (the test process is already attached to the
session's cluster) and is stopped with everything it started."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sweep_support import run_driver, seed_workdir, tail

pytestmark = pytest.mark.e2e

EN = "tiny-llama__en__s0__e1"


def test_sweep_trains_across_two_nodes_on_shared_storage(smoke_study, tmp_path, require_tool) -> None:
    require_tool("apertium")
    from pipelines.cells import study_cells, train_hash
    from pipelines.presets import load_config

    workdir = tmp_path / "work"
    cfg = load_config("smoke", [f"workdir={workdir}"])
    cells = {c.id: c for c in study_cells(cfg)}
    ds_hash = seed_workdir(smoke_study["result"].workdir, workdir, cfg, checkpoints=[],
                           cells=[c for cid, c in cells.items() if cid != EN])
    out, log = tmp_path / "out.json", tmp_path / "driver.log"
    rc = run_driver(Path(__file__).with_name("multinode_driver.py"), [str(workdir), str(out)], log, timeout=540)
    assert rc == 0, tail(log, 8000)
    got = json.loads(out.read_text())
    driver_log = log.read_text()

    assert got["cells"] == {"tiny-llama__base": True, EN: False, "tiny-llama__es__s0__e1": True}
    # The cell's two training workers ran on the two different nodes of the cluster.
    assert len(got["nodes"]) == 2
    assert len(got["train_workers"]) == 2, got["train_workers"]
    assert {w["node"] for w in got["train_workers"]} == set(got["nodes"])
    assert "sweep concurrency 1: auto: the cluster holds 2 worker slot(s)" in driver_log
    # Checkpoints and trial results landed under the shared storage paths in the workdir: the rank-0
    # worker reported its checkpoint into Train's storage_path (removed once the cell copied it out,
    # so its report is the record), and the cell's weights and Tune's trial result are there.
    th = train_hash(cfg, cells[EN], ds_hash)
    reported = re.findall(r"checkpoint=Checkpoint\(filesystem=local, path=([^)]+)\)", driver_log)
    assert reported and all(p.startswith(f"{workdir}/ray_train/train-{th}/checkpoint_") for p in reported)
    assert (workdir / "checkpoints" / th / "manifest.json").exists()
    assert list((workdir / "checkpoints" / th).glob("*/adapter_model.safetensors"))
    trial_dirs = list((workdir / "tune").glob(f"sweep-{got['study_hash']}/{EN}"))
    assert trial_dirs and (trial_dirs[0] / "result.json").read_text().strip()
