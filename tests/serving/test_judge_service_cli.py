"""`serve run` on serving/judge.yaml itself (the CLI path), on a free loopback port. Marked slow: it
starts a second Ray cluster in a subprocess (about 30-60 s)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from judge_service_cases import CASES, JUDGE_YAML, REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_serve_run_judge_yaml(tmp_path: Path) -> None:
    cfg = yaml.safe_load(JUDGE_YAML.read_text(encoding="utf-8"))
    port = free_port()
    cfg["http_options"].update(host="127.0.0.1", port=port)  # never the default 0.0.0.0:8000 in tests
    config_path = tmp_path / "judge.yaml"
    config_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    token = secrets.token_hex(16)
    env = {**os.environ, "SAFEDRIFT_JUDGE_TOKEN": token, "RAY_AUTH_MODE": "disabled"}
    serve_cli = Path(sys.executable).with_name("serve")
    proc = subprocess.Popen([str(serve_cli), "run", str(config_path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, "serve run exited early"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("judge service from serve run never became ready")
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{base}/v1/judge", json={"items": [i for i, _ in CASES]}, headers=headers, timeout=30)
        assert r.status_code == 200
        assert [x["label"] for x in r.json()["results"]] == [label for _, label in CASES]
        assert httpx.post(f"{base}/v1/judge", json={"items": []}, timeout=30).status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # serve run shuts its cluster down on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
