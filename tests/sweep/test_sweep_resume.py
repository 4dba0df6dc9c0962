"""A sweep whose driver is killed resumes with `safedrift sweep --resume` and redoes no finished cell, with
everything logged to a real `mlflow server` over HTTP.

One scenario, run for real in subprocesses that each start their own local Ray cluster: the smoke grid
(base, en, es) in a new workdir seeded with the session smoke study's data sets, its finished base cell
and the en cell's fine-tuned weights (so base is done, en only evaluates, and es really trains). While es
trains (the sweep's first stage, before any evaluation) the driver is SIGKILLed, and every process it
started is killed with it. `safedrift sweep --resume` then trains es, evaluates en and es, and must not
touch base or en's weights. The tests below check the outcome on disk and in MLflow over HTTP; the sqlite
store is checked on the session study."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from sweep_support import REPO, PrivateRay, file_snapshot, flat_config, mlflow_server, seed_workdir, tail

pytestmark = pytest.mark.e2e

BASE, EN, ES = "tiny-llama__base", "tiny-llama__en__s0__e1", "tiny-llama__es__s0__e1"


def _wait_for_training(proc: subprocess.Popen, progress: Path, log: Path, timeout: float = 420) -> dict[str, Any]:
    """Waits until the cell whose progress file is `progress` reports its fine-tune started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads(progress.read_text())
        except (OSError, ValueError):
            record = {}
        if str(record.get("stage", "")).startswith("finetune"):
            return record
        if proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before es trained:\n{tail(log)}")
        time.sleep(0.25)
    raise AssertionError(f"es did not start training within {timeout:.0f} s:\n{tail(log)}")


@pytest.fixture(scope="module")
def resumed(smoke_study, tmp_path_factory, require_tool) -> dict[str, Any]:
    require_tool("apertium")  # back-translation of the es answers
    from pipelines.cells import cell_dir, checkpoint_dir, study_cells
    from pipelines.presets import load_config

    root = tmp_path_factory.mktemp("resume")
    workdir = root / "work"
    ray = PrivateRay()
    try:
        with mlflow_server(root / "mlflow") as url:
            overrides = [f"workdir={workdir}", "sweep.max_concurrent=1", f"mlflow.tracking_uri={url}"]
            cfg = load_config("smoke", overrides)
            cells = {c.id: c for c in study_cells(cfg)}
            assert list(cells) == [BASE, EN, ES]
            ds_hash = seed_workdir(smoke_study["result"].workdir, workdir, cfg, checkpoints=[cells[EN]],
                                   cells=[cells[BASE]])
            dirs = {cid: cell_dir(workdir, cfg, c, ds_hash) for cid, c in cells.items()}
            ckpts = {cid: checkpoint_dir(workdir, cfg, cells[cid], ds_hash) for cid in (EN, ES)}
            en_weights = file_snapshot(ckpts[EN])
            cmd = [sys.executable, "-m", "pipelines.cli", "-v", "sweep", "-c", "smoke", *overrides]

            first_log = root / "first.log"
            with open(first_log, "w") as out:
                first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ray.env(), cwd=REPO,
                                         start_new_session=True)
                try:
                    at_kill = _wait_for_training(first, workdir / "progress" / f"{dirs[ES].name}.json", first_log)
                finally:
                    survivors = ray.kill_all(first)
            done_at_kill = [cid for cid, d in dirs.items() if (d / "manifest.json").exists()]
            assert done_at_kill == [BASE], f"cells finished before the kill: {done_at_kill}"
            assert not (ckpts[ES] / "manifest.json").exists(), "es finished training before the kill"
            before = {cid: file_snapshot(dirs[cid]) for cid in done_at_kill}

            t0 = time.time()
            second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=ray.env(), cwd=REPO,
                                    timeout=600)
            (root / "second.log").write_text(second.stdout + second.stderr)
            assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
            after = {cid: file_snapshot(dirs[cid]) for cid in done_at_kill}
            client = mlflow.MlflowClient(url)
            # Read everything from the server while it runs; the tests only look at the records.
            sweeps = list((workdir / "sweeps").glob("*/*/manifest.json"))
            assert len(sweeps) == 1
            parent_id = json.loads(sweeps[0].read_text())["parent_run_id"]
            exp_id = client.get_run(parent_id).info.experiment_id
            children = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
            history = {r.info.run_name: {k: client.get_metric_history(r.info.run_id, k)
                                         for k in ("train/loss", "train/lr", "train/tokens_per_s")}
                       for r in children}
            # Adapters uploaded by any cell run, of this sweep or of the killed one (a cell that finished
            # before the kill uploaded its adapter then; reused, it logs its numbers again, not its files).
            adapters: dict[str, list[bytes]] = {}
            for r in client.search_runs([exp_id]):
                paths = [a.path for a in client.list_artifacts(r.info.run_id, "adapter")]
                if "adapter/adapter_model.safetensors" in paths:
                    local = client.download_artifacts(r.info.run_id, "adapter/adapter_model.safetensors",
                                                      str(root / "dl" / r.info.run_id))
                    adapters.setdefault(r.info.run_name, []).append(Path(local).read_bytes())
            parent_artifacts = [a.path for a in client.list_artifacts(parent_id)]
            # The killed driver's parent and cell runs were left RUNNING; the resume closes them.
            statuses = {r.info.run_id: r.info.status for r in client.search_runs([exp_id])}
            # Reused cells in this sweep carry their adapter and answers too (re-logged, not recomputed).
            reused_artifacts = {r.info.run_name: sorted(a.path for a in client.list_artifacts(r.info.run_id))
                                for r in children if r.data.tags.get("safedrift.reused") == "true"}
            return {"at_kill": at_kill, "en_weights": (en_weights, file_snapshot(ckpts[EN])), "ckpts": ckpts,
                    "statuses": statuses, "reused_artifacts": reused_artifacts, "cfg": cfg, "workdir": workdir, "dirs": dirs, "done_at_kill": done_at_kill,
                    "before": before, "after": after, "second": second, "resume_seconds": time.time() - t0,
                    "survivors": survivors, "url": url, "server_root": root / "mlflow", "parent_id": parent_id,
                    "children": children, "history": history, "adapters": adapters,
                    "parent_artifacts": parent_artifacts, "ds_hash": ds_hash}
    finally:
        ray.close()


def test_killed_sweep_resumes_without_redoing_finished_cells(resumed) -> None:
    done, dirs, out = resumed["done_at_kill"], resumed["dirs"], resumed["second"]
    # The finished cell: every file (manifest, generations, judged answers, metrics) byte- and mtime-identical.
    for cid in done:
        assert resumed["after"][cid] == resumed["before"][cid], f"{cid} was touched by the resumed sweep"
        assert any(p.startswith("generations/") for p in resumed["before"][cid])
    # en's seeded weights were evaluated, not trained again.
    assert resumed["en_weights"][0] == resumed["en_weights"][1]
    # Every cell is done in the end, and the resume says which cells it reused and which it ran.
    assert all((d / "manifest.json").exists() for d in dirs.values())
    assert f"cell {BASE}: reused" in out.stdout
    assert f"cell {EN}: ran" in out.stdout and f"cell {ES}: ran" in out.stdout
    # The driver's own log lines went to the run's log file in the workdir, whose path it printed.
    log = Path(re.search(r"^full log: (\S+)$", out.stdout, re.M).group(1)).read_text()
    assert f"reused (finished earlier): {BASE}; to train: {ES}; to evaluate: {EN}, {ES}" in log
    # Tune's state was either restored or (half-written by the kill) replaced by a new grid of the rest.
    assert ("resuming the interrupted Tune grid" in log) or ("starting a new Tune grid of 1" in log)
    # One evaluation worker evaluated en and es with one load of the model.
    places = {json.loads((dirs[c] / "manifest.json").read_text())["evaluated_on"]["pid"] for c in (EN, ES)}
    assert len(places) == 1


def test_the_interrupted_cell_trained_after_the_kill(resumed) -> None:
    manifest = json.loads((resumed["dirs"][ES] / "manifest.json").read_text())
    assert manifest["cell_id"] == ES
    ckpt = resumed["ckpts"][ES]
    assert (ckpt / "adapter" / "adapter_model.safetensors").exists()
    assert manifest["train"]["train_seconds"] > 0  # its training record, from the resumed sweep's fine-tune
    assert (ckpt / "manifest.json").stat().st_mtime > resumed["at_kill"]["updated"]


def test_mlflow_over_http_has_the_sweep(resumed) -> None:
    children = {r.info.run_name: r for r in resumed["children"]}
    assert sorted(children) == [BASE, EN, ES]
    expected = flat_config(resumed["cfg"].model_dump(mode="json"))
    for name, run in children.items():
        params = run.data.params
        # Every resolved config value is a param of the cell's run, plus the cell's own coordinates.
        missing = {k: v for k, v in expected.items() if params.get(k) != v}
        assert not missing, f"{name}: config values not logged as params: {missing}"
        assert params["cell.ft_lang"] == ("base" if name == BASE else name.split("__")[1])
        for lang in ("en", "es"):
            assert 0.0 <= run.data.metrics[f"safety/compliance_rate/{lang}"] <= 1.0
    # The cell trained by this sweep logged its steps (loss, learning rate, tokens/s) from the rank-0
    # training worker straight to the server, into the run its evaluation then completed.
    hist = resumed["history"][ES]
    steps = [m.step for m in hist["train/loss"]]
    assert steps and steps == sorted(set(steps))
    assert [m.step for m in hist["train/lr"]] == steps and [m.step for m in hist["train/tokens_per_s"]] == steps
    assert all(m.value > 0 for m in hist["train/loss"] + hist["train/tokens_per_s"])
    assert all(m.value >= 0 for m in hist["train/lr"]) and any(m.value > 0 for m in hist["train/lr"])
    assert "config.json" in resumed["parent_artifacts"]


def test_adapters_went_through_the_http_artifact_proxy(resumed) -> None:
    from pipelines.cells import Cell, train_hash

    for name in (EN, ES):
        ckpt = resumed["workdir"] / "checkpoints" / train_hash(
            resumed["cfg"], Cell("tiny-llama", name.split("__")[1], 0, 1), resumed["ds_hash"])
        on_disk = (ckpt / "adapter" / "adapter_model.safetensors").read_bytes()
        assert resumed["adapters"].get(name) and all(b == on_disk for b in resumed["adapters"][name]), name
    # Stored by the server under its --artifacts-destination (proxied), not written by the client locally.
    stored = list(resumed["server_root"].glob("artifacts/**/adapter/adapter_model.safetensors"))
    assert len(stored) >= 2


def test_sqlite_store_has_every_param_and_per_step_metrics(smoke_study) -> None:
    """The default store (sqlite in the workdir), on the session's smoke study."""
    res = smoke_study["result"]
    client = mlflow.MlflowClient(f"sqlite:///{res.workdir / 'mlflow.db'}")
    children = client.search_runs([client.get_run(res.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
    expected = flat_config(smoke_study["cfg"].model_dump(mode="json"))
    assert len(children) == 3
    for run in children:
        assert {k: v for k, v in expected.items() if run.data.params.get(k) != v} == {}
        if run.info.run_name != BASE:
            loss = client.get_metric_history(run.info.run_id, "train/loss")
            lr = client.get_metric_history(run.info.run_id, "train/lr")
            tps = client.get_metric_history(run.info.run_id, "train/tokens_per_s")
            assert loss and [m.step for m in lr] == [m.step for m in loss] == [m.step for m in tps]
            assert all(m.value > 0 for m in tps)


def test_resume_closes_the_killed_runs_and_relogs_reused_artifacts(resumed) -> None:
    statuses = resumed["statuses"]
    assert "RUNNING" not in statuses.values(), statuses
    assert "KILLED" in statuses.values()  # the killed sweep's parent, at least
    assert statuses[resumed["parent_id"]] == "FINISHED"
    reused = resumed["reused_artifacts"]
    assert reused, "no cell of the resumed sweep was marked reused"
    for name, paths in reused.items():
        assert "answers" in paths and "metrics" in paths, (name, paths)
        if name != BASE:
            assert "adapter" in paths, (name, paths)
