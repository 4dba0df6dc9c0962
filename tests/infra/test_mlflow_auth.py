"""MLflow behind its login, started exactly as the Deployment starts it: infra/base/mlflow/start-mlflow.sh
on 127.0.0.1 with a sqlite store standing in for PostgreSQL (test_mlflow_postgres.py covers that part).

Checks over real HTTP: every API call without a login or with a wrong one is refused (401), /health
stays open for the probes, the Ray pods' client login logs runs and artifacts but cannot manage users,
the admin can, a rotated client password replaces the old one at the next start, and no password is on
a command line or in a world-readable file. The server runs in its own session and is stopped by its
process group in teardown.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import secrets
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from infra_support import INFRA, missing_tool
from mlflow_support import free_port, stop_process_group

SCRIPT = INFRA / "base" / "mlflow" / "start-mlflow.sh"
STARTUP_TIMEOUT_S = 120


def _env(root: Path, client_password: str, admin_password: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)  # the script runs `python` and `mlflow` from PATH
    return {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth" / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_CLIENT_USERNAME": "safedrift-sweep",
        "MLFLOW_CLIENT_PASSWORD": client_password,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def _status(url: str, auth: tuple[str, str] | None = None, body: dict | None = None) -> int:
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@contextlib.contextmanager
def started(root: Path, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    url = f"http://127.0.0.1:{free_port()}"
    args = [
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--workers",
        "1",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
    ]
    log_path = root / f"server-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["/bin/sh", str(SCRIPT), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("start-mlflow.sh did not serve:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)
            yield url, proc
        finally:
            stop_process_group(proc, term_timeout=15)


def _healthy(url: str) -> bool:
    try:
        return _status(f"{url}/health") == 200
    except OSError:  # not listening yet
        return False


def _cmdlines(pgid: int) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(proc.name)) == pgid:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return out


def test_mlflow_refuses_requests_without_a_login(tmp_path: Path, monkeypatch):
    import mlflow

    if importlib.util.find_spec("flask_wtf") is None:
        # `mlflow server --app-name basic-auth` needs mlflow's "auth" extra (Flask-WTF, for CSRF); the
        # images install it (docker/Dockerfile.*), the dev environment needs it for this test.
        missing_tool("Flask-WTF is not installed: the dev extras need mlflow[auth]")

    client_pw, admin_pw = secrets.token_hex(16), secrets.token_hex(16)
    env = _env(tmp_path, client_pw, admin_pw)
    with started(tmp_path, env) as (url, proc):
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(f"{url}/health") == 200  # the probes need no login
        assert _status(search) == 401
        assert _status(search, ("safedrift-sweep", "not-the-password")) == 401
        assert _status(search, ("safedrift-sweep", client_pw)) == 200

        # The Ray pods' login, through the client library as the sweep uses it (MLFLOW_TRACKING_*).
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "safedrift-sweep")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", client_pw)
        client = mlflow.MlflowClient(tracking_uri=url)
        exp = client.create_experiment(f"auth-{secrets.token_hex(4)}")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "safety/compliance_rate/en", 0.5)
        note = tmp_path / "note.txt"
        note.write_text("proxied")
        client.log_artifact(run.info.run_id, str(note))
        assert client.get_run(run.info.run_id).data.metrics == {"safety/compliance_rate/en": 0.5}
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]

        # Not an admin: it cannot create users; the admin can.
        new_user = {"username": f"u{secrets.token_hex(3)}", "password": secrets.token_hex(12)}
        assert _status(f"{url}/api/2.0/mlflow/users/create", ("safedrift-sweep", client_pw), new_user) == 403
        assert _status(f"{url}/api/2.0/mlflow/users/create", ("admin", admin_pw), new_user) == 200

        # No secret on a command line (ps shows argv to everyone in the pod); the config is private.
        for cmdline in _cmdlines(proc.pid):
            for value in (client_pw, admin_pw, env["MLFLOW_FLASK_SERVER_SECRET_KEY"]):
                assert value not in cmdline
        ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
        assert stat.S_IMODE(ini.stat().st_mode) == 0o600
        assert "database_uri" in ini.read_text() and client_pw not in ini.read_text()


def test_a_rotated_client_password_replaces_the_old_one_at_the_next_start(tmp_path: Path):
    # The provisioning step of the script runs for real against the auth store; `mlflow` itself is a
    # stub on PATH that records its arguments, so no second server has to start (the test above shows
    # the server authenticating against this store).
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    stub = tmp_path / "bin" / "mlflow"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$MLFLOW_STUB_ARGS"\n')
    stub.chmod(0o755)
    old, new, admin = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16)
    for password in (old, new):
        env = _env(tmp_path, password, admin)
        env["PATH"] = f"{stub.parent}:{env['PATH']}"
        env["MLFLOW_STUB_ARGS"] = str(tmp_path / "args.txt")
        proc = subprocess.run(
            ["/bin/sh", str(SCRIPT), "--port", "5000"], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    # The script hands its own arguments on, after the auth app, and nothing secret.
    assert (tmp_path / "args.txt").read_text().split() == [
        "server",
        "--app-name",
        "basic-auth",
        "--port",
        "5000",
    ]
    store = SqlAlchemyStore()
    store.init_db(env["MLFLOW_BACKEND_STORE_URI"])  # the auth store defaults to the backend store
    assert store.authenticate_user("safedrift-sweep", new)
    assert not store.authenticate_user("safedrift-sweep", old)
    assert not store.get_user("safedrift-sweep").is_admin


@pytest.mark.parametrize(
    "missing", ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_CLIENT_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"]
)
def test_start_script_names_a_missing_secret(tmp_path: Path, missing: str):
    env = _env(tmp_path, secrets.token_hex(16), secrets.token_hex(16))
    env[missing] = ""
    proc = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert missing in proc.stderr and "infra/README.md" in proc.stderr
    assert not Path(env["MLFLOW_AUTH_CONFIG_PATH"]).exists(), "nothing is written before the checks pass"


def test_start_script_refuses_the_admin_as_client(tmp_path: Path):
    env = _env(tmp_path, secrets.token_hex(16), secrets.token_hex(16))
    env["MLFLOW_CLIENT_USERNAME"] = env["MLFLOW_AUTH_ADMIN_USERNAME"]
    proc = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "admin" in proc.stderr
