"""A real `mlflow server` on 127.0.0.1 for tests that need MLflow over HTTP (the sweep's resume test and
the PostgreSQL infra check): one launcher, so both start and stop the server the same way."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(root: Path, backend_uri: str | None = None, startup_timeout: float = 120.0) -> Iterator[str]:
    """Serves backend_uri (default: sqlite in root) with proxied artifacts under root/artifacts; yields
    its URL. It runs in its own session, so teardown stops the server and its workers together, and only
    them."""
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--workers", "1",
           "--backend-store-uri", backend_uri or f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + startup_timeout
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise AssertionError("mlflow server did not become healthy:\n"
                                         + log_path.read_text(errors="replace")[-3000:])
                time.sleep(0.5)
            yield url
        finally:
            stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen, term_timeout: float = 10) -> None:
    """SIGTERM the server's whole process group (it forks workers), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
