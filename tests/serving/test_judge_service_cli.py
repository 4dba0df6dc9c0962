"""`serve run` on serving/judge.yaml itself (the CLI path), on a free loopback port: it serves with a
token and refuses to deploy without one (the app builder fails closed by itself). Marked slow: it starts
Ray clusters in subprocesses (about 30-60 s each)."""

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
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEDRIFT_JUDGE_TOKEN")}
    env.update(SAFEDRIFT_JUDGE_TOKEN=token, RAY_AUTH_MODE="disabled",
               RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="serving.proxy:proxy_middlewares")  # as judge.yaml says
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
        assert "x-safedrift-proxy-limits" in httpx.get(f"{base}/healthz", timeout=10).headers  # the proxy's limits
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


def test_serve_run_without_a_token_refuses_to_deploy(tmp_path: Path) -> None:
    cfg = yaml.safe_load(JUDGE_YAML.read_text(encoding="utf-8"))
    port = free_port()
    cfg["http_options"].update(host="127.0.0.1", port=port)
    config_path = tmp_path / "judge.yaml"
    config_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEDRIFT_JUDGE_TOKEN")}
    env["RAY_AUTH_MODE"] = "disabled"
    serve_cli = Path(sys.executable).with_name("serve")
    log = tmp_path / "serve-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(serve_cli), "run", str(config_path)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # `serve run` stays up after a failed deploy: wait for the builder's refusal in its output.
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and "no token is configured" not in log.read_text(errors="replace"):
            assert proc.poll() is None or "no token" in log.read_text(errors="replace"), "serve run exited early"
            time.sleep(1)
        assert "serving.app:build_app: auth.required is true but no token is configured" in log.read_text(
            errors="replace")
        with pytest.raises(httpx.HTTPError):  # nothing was deployed: no app answers (or nothing listens)
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
