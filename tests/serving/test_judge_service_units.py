"""Parts of the judge service that need no server: config, auth rules, the client's retry logic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import yaml

from serving.auth import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    InsecureBindError,
    TokenChecker,
    TokenConfigError,
    check_bind,
    is_loopback,
    load_token,
)
from serving.client import JudgeAPIError, JudgeClient
from serving.config import JudgeServiceConfig, load_config

REPO = Path(__file__).resolve().parents[2]


# -- config ---------------------------------------------------------------------------------------------
def test_judge_yaml_is_a_valid_serve_config_without_secrets() -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = (REPO / "serving" / "judge.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(raw)
    schema = ServeDeploySchema.model_validate(data)
    app = schema.applications[0]
    assert app.import_path == "serving.app:build_app"
    cfg = load_config(REPO / "serving" / "judge.yaml")
    assert cfg.auth.required is True  # binds 0.0.0.0: must fail closed
    assert cfg.backend.autoscaling is not None
    assert "token" not in json.dumps(app.args).lower()


def test_build_app_from_yaml_args() -> None:
    from ray.serve import Application

    from serving.app import build_app

    args = yaml.safe_load((REPO / "serving" / "judge.yaml").read_text())["applications"][0]["args"]
    assert isinstance(build_app(args), Application)


def test_config_rejects_typos_and_unfillable_batches() -> None:
    with pytest.raises(ValueError, match="batchng"):
        JudgeServiceConfig.model_validate({"batchng": {}})
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        JudgeServiceConfig.model_validate({"batching": {"max_batch_size": 64}, "backend": {"max_ongoing_requests": 8}})
    with pytest.raises(ValueError, match="min_replicas"):
        JudgeServiceConfig.model_validate({"backend": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}})


def test_replicas_or_autoscaling() -> None:
    fixed = JudgeServiceConfig.model_validate({"backend": {"num_replicas": 3}}).backend.serve_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    auto = JudgeServiceConfig.model_validate(
        {"backend": {"autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}}}
    ).backend.serve_options()
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8.0}


# -- auth -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "judge.local", ""])
def test_non_loopback_needs_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(InsecureBindError, match="SAFEDRIFT_JUDGE_TOKEN"):
        check_bind(host, None)
    check_bind(host, "a-token")


def test_serve_judge_refuses_non_loopback_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from serving.app import serve_judge

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    ray_was_up = ray.is_initialized()
    for host in ["0.0.0.0", "10.1.2.3", "judge.example.com"]:
        with pytest.raises(InsecureBindError, match="refusing to serve the judge"):
            serve_judge(REPO / "serving" / "judge.yaml", host=host, port=1)
    assert ray.is_initialized() == ray_was_up  # refused before starting anything


def test_token_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    assert load_token() is None
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(secret))
    assert load_token() == "from-file"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert load_token() == "from-env"
    monkeypatch.delenv(TOKEN_ENV)
    secret.write_text("   ")
    with pytest.raises(TokenConfigError, match="empty"):
        load_token()
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(TokenConfigError, match="cannot be read"):
        load_token()


def test_token_checker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    with pytest.raises(TokenConfigError, match="auth.required"):
        TokenChecker(required=True)
    assert TokenChecker(required=False).check(None)  # no token, not required: open (loopback only)
    secret = tmp_path / "token"
    secret.write_text("s3cret")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(secret))
    checker = TokenChecker(required=True, recheck_s=0.0)
    assert checker.check("Bearer s3cret") and checker.check("bearer s3cret")
    for bad in [None, "", "s3cret", "Bearer", "Bearer s3cre", "Bearer s3cretx", "Basic s3cret", "Bearer ß3cret"]:
        assert not checker.check(bad)
    secret.write_text("rotated")  # a rotated Kubernetes secret is picked up
    os.utime(secret, (1, 1))
    assert checker.check("Bearer rotated") and not checker.check("Bearer s3cret")


# -- client ---------------------------------------------------------------------------------------------
def _ok(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["items"]
    return httpx.Response(200, json={"results": [
        {"label": "refused" if "sorry" in i["response"] else "compliant", "score": 0.0, "judge": "j",
         "judge_version": "1"} for i in items]})


def _client(handler, **kw) -> JudgeClient:  # type: ignore[no-untyped-def]
    return JudgeClient("http://judge.test", token="t", transport=httpx.MockTransport(handler), backoff_s=0.001, **kw)


def test_client_batches_in_order_and_sends_token() -> None:
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer t"
        seen.append(len(json.loads(request.content)["items"]))
        return _ok(request)

    items = [{"prompt": "p", "response": "sorry" if i % 3 == 0 else "sure"} for i in range(25)]
    results = _client(handler, batch_size=10, max_concurrency=3).judge(items)
    assert sorted(seen) == [5, 10, 10]
    assert [r["label"] for r in results] == ["refused" if i % 3 == 0 else "compliant" for i in range(25)]


def test_client_retries_503_and_connection_errors() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused", request=request)
        if calls["n"] == 2:
            return httpx.Response(503, json={"detail": "overloaded"}, headers={"Retry-After": "0"})
        return _ok(request)

    assert _client(handler, retries=3).judge([{"prompt": "p", "response": "sure"}])[0]["label"] == "compliant"
    assert calls["n"] == 3


def test_client_gives_up_after_retries() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "overloaded"})

    with pytest.raises(JudgeAPIError, match="HTTP 503 after 3 tries") as exc:
        _client(handler, retries=2).judge([{"prompt": "p", "response": "x"}])
    assert exc.value.status == 503


def test_client_does_not_retry_client_errors() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(413, json={"detail": "300 items exceed max_items=256", "limit": "max_items"})

    with pytest.raises(JudgeAPIError, match="max_items=256") as exc:
        _client(handler, retries=5).judge([{"prompt": "p", "response": "x"}])
    assert calls["n"] == 1 and exc.value.status == 413 and exc.value.limit == "max_items"


def test_client_rejects_malformed_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"results": []})

    with pytest.raises(JudgeAPIError, match="malformed"):
        _client(handler).judge([{"prompt": "p", "response": "x"}])


# -- batching: coalescing of batches that queue behind a running judge call -------------------------------
def test_coalescer_merges_queued_groups_and_keeps_order() -> None:
    import asyncio
    import threading
    import time

    from serving.backend import _Coalescer

    calls: list[int] = []
    gate = threading.Event()

    def fn(items: list[dict]) -> list[dict]:
        gate.wait(5)  # the first call blocks until every other request has queued
        calls.append(len(items))
        return [{"label": i["response"]} for i in items]

    async def scenario() -> list:
        runner = _Coalescer(fn, max_requests=8)
        first = asyncio.ensure_future(runner.submit([[{"response": "r0"}]]))
        await asyncio.sleep(0.05)  # r0 is running
        rest = [asyncio.ensure_future(runner.submit([[{"response": f"r{i}"}, {"response": f"r{i}b"}]]))
                for i in range(1, 11)]
        await asyncio.sleep(0.05)
        gate.set()
        return [await first] + [await f for f in rest]

    start = time.monotonic()
    out = asyncio.run(scenario())
    assert time.monotonic() - start < 5
    assert out[0] == [[{"label": "r0"}]]
    assert out[3] == [[{"label": "r3"}, {"label": "r3b"}]]
    assert calls == [1, 16, 4]  # 10 queued requests merged: 8 (the cap), then the remaining 2


def test_coalescer_propagates_errors_to_every_caller() -> None:
    import asyncio

    from serving.backend import _Coalescer

    def fn(items: list[dict]) -> list[dict]:
        raise ValueError("boom")

    async def scenario() -> list:
        runner = _Coalescer(fn, max_requests=4)
        return await asyncio.gather(*(runner.submit([[{"response": "x"}]]) for _ in range(3)), return_exceptions=True)

    assert all(isinstance(r, ValueError) for r in asyncio.run(scenario()))
