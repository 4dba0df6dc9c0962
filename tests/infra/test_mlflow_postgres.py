"""MLflow tracking server on a real PostgreSQL, as infra/base deploys it, on this machine.

A throwaway PostgreSQL cluster (initdb + pg_ctl in a temp dir, a free port on 127.0.0.1, password
auth over TCP) and `mlflow server --backend-store-uri postgresql://...` with a local artifact
destination stand in for the StatefulSet and the Deployment. Clients talk to it over HTTP only, as
the Ray pods do through MLFLOW_TRACKING_URI. Both servers are stopped (by their PIDs) in teardown.

- test_postgres_backed_server_tracks_nested_runs: the server part alone (no Ray, ~15 s).
- test_smoke_sweep_logs_to_postgres_backed_server (e2e): the project's runner on the smoke preset.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from infra_support import missing_tool
from mlflow_support import free_port, mlflow_server

STARTUP_TIMEOUT_S = 120


def _pg_bin() -> Path | None:
    # Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<major>/bin.
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """A PostgreSQL cluster of our own; as root it runs as the 'postgres' user (the server refuses root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="safedrift-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser") or next(
                (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None
            )
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                missing_tool("running as root but there is no 'postgres' user to run the server")
            if runuser is None:
                missing_tool("running as root but `runuser` is missing")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = [runuser, "-u", "postgres", "--"]

    def run(self, tool: str, *args: str, **kw) -> subprocess.CompletedProcess:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}\n{tail}")
        return proc

    def start(self) -> None:
        # Password (scram) auth over TCP, like a real deployment; trust only on the private socket.
        self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
        )
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"), "-w", "start"
        )

    def sql(self, statement: str) -> None:
        self.run(
            "psql",
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            statement,
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def database_uri() -> Iterator[str]:
    bindir = _pg_bin()
    if bindir is None or not (bindir / "pg_ctl").exists():
        missing_tool("PostgreSQL server binaries (initdb, pg_ctl) not found")
    pg = Postgres(bindir)
    try:
        pg.start()
        # A fresh random password per run: nothing secret is stored anywhere.
        password = secrets.token_hex(16)
        pg.sql(f"CREATE ROLE mlflow LOGIN PASSWORD '{password}'")
        pg.sql("CREATE DATABASE mlflow OWNER mlflow")
        # +psycopg2, as in infra/base/mlflow.yaml: SQLAlchemy 2.1 maps postgresql:// to psycopg 3.
        yield f"postgresql+psycopg2://mlflow:{password}@127.0.0.1:{pg.port}/mlflow"
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def tracking_uri(database_uri: str, tmp_path_factory) -> Iterator[str]:
    # --artifacts-destination under the workdir stands in for s3://...: the same proxied artifact path.
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), database_uri, STARTUP_TIMEOUT_S) as url:
        yield url


def test_postgres_backed_server_tracks_nested_runs(tracking_uri: str, database_uri: str, tmp_path: Path):
    import mlflow
    import psycopg2

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp_id = client.create_experiment(f"infra-check-{secrets.token_hex(4)}")
    parent = client.create_run(exp_id, run_name="sweep")
    client.log_param(parent.info.run_id, "preset", "smoke")
    child = client.create_run(exp_id, run_name="cell", tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_metric(child.info.run_id, "safety/compliance_rate/en", 0.25)
    client.log_metric(child.info.run_id, "safety/compliance_rate/es", 0.5)
    note = tmp_path / "note.txt"
    note.write_text("proxied artifact")
    client.log_artifact(child.info.run_id, str(note))
    for run in (child, parent):
        client.set_terminated(run.info.run_id)

    runs = client.search_runs([exp_id])
    assert len(runs) == 2
    (kid,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert kid.data.metrics == {"safety/compliance_rate/en": 0.25, "safety/compliance_rate/es": 0.5}
    assert client.get_run(parent.info.run_id).data.params == {"preset": "smoke"}
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["note.txt"]

    # The rows are in PostgreSQL (not in some local fallback store the client picked).
    with (
        contextlib.closing(psycopg2.connect(database_uri.replace("+psycopg2", ""))) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(exp_id),))
        assert cur.fetchone()[0] == 2
        cur.execute(
            "SELECT value FROM metrics WHERE run_uuid = %s AND key = %s",
            (child.info.run_id, "safety/compliance_rate/es"),
        )
        assert cur.fetchone()[0] == 0.5


@pytest.mark.e2e
def test_smoke_sweep_logs_to_postgres_backed_server(tracking_uri: str, smoke_study, monkeypatch):
    try:
        from pipelines.presets import load_config
        from pipelines.run import run_study
    except ImportError as exc:  # the runner is written in parallel with this test
        pytest.fail(f"the project's runner is not importable: {exc}")
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    # SAFEDRIFT_WORKDIR would take precedence over the workdir override.
    monkeypatch.delenv("SAFEDRIFT_WORKDIR", raising=False)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    before = {e.experiment_id for e in client.search_experiments()}

    # The session's smoke study already trained and evaluated every cell; pointed at a new tracking
    # server the same study is logged there again from its cached cells (no retraining).
    workdir = smoke_study["result"].workdir
    result = run_study(load_config("smoke", overrides=[f"workdir={workdir}"]))
    assert result.stages["sweep"]["reused"] is True

    new = [e for e in client.search_experiments() if e.experiment_id not in before]
    exp_ids = [e.experiment_id for e in new] or [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"expected one parent run, got {[r.info.run_name for r in parents]}"
    parent = parents[0]
    if getattr(result, "parent_run_id", None):
        assert result.parent_run_id == parent.info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert children, "no nested (per-cell) runs"
    for child in children:
        names = [k for k in child.data.metrics if k.startswith("safety/compliance_rate/")]
        assert names, f"cell run {child.info.run_name} has no safety/compliance_rate/* metric"
