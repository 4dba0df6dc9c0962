"""Serve's HTTP proxy under one client that tries to stall the others (issue 30, items 2 and 3), through
`safedrift serve` itself on a free loopback port (its own local Ray cluster, about 30-60 s to start): the
request timeout from the Serve config holds and a client cannot switch it off; 64 slow bodies and 1,000
half-open connections leave a second client's requests answered within their deadline and are closed
by the proxy; an oversized header is refused at once."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml
from judge_service_cases import REPO, free_port

sys.path.insert(0, str(REPO))  # benchmarks/ is not installed
from benchmarks.serving.proxy_probe import SLOW, probe, probe_config, start_serve, stop_serve  # noqa: E402
from serving.proxy import GUARD_HEADER, ProxyLimits  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HEAD_S, BODY_S, REQUEST_TIMEOUT_S = 3.0, 3.0, 4.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("proxy")
    tokens = {"attacker": "attacker-" + secrets.token_hex(16), "good": "good-" + secrets.token_hex(16)}
    token_dir = tmp / "tokens"
    token_dir.mkdir()
    for name, token in tokens.items():
        (token_dir / name).write_text(token)
        (token_dir / name).chmod(0o600)
    port = free_port()
    config = tmp / "judge.yaml"
    config.write_text(yaml.safe_dump(probe_config(port, REQUEST_TIMEOUT_S)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFEDRIFT_JUDGE_TOKEN", "RAY_SERVE_HTTP_PROXY"))}
    env.update(SAFEDRIFT_JUDGE_TOKENS_DIR=str(token_dir), RAY_AUTH_MODE="disabled",
               SAFEDRIFT_PROXY_HEADER_TIMEOUT_S=str(HEAD_S), SAFEDRIFT_PROXY_BODY_TIMEOUT_S=str(BODY_S))
    env.pop("RAY_ADDRESS", None)
    proc = start_serve(str(config), port, env, str(REPO))
    try:
        yield {"url": f"http://127.0.0.1:{port}", **tokens}
    finally:
        stop_serve(proc)


def test_the_proxy_runs_safedrifts_limits(service: dict) -> None:
    assert GUARD_HEADER.decode() in httpx.get(f"{service['url']}/healthz", timeout=10).headers


def test_request_timeout_from_the_serve_config_holds_and_a_client_cannot_switch_it_off(service: dict) -> None:
    """`safedrift serve` ignored http_options.request_timeout_s, and `x-request-timeout-seconds: 0` turned
    the proxy's timeout off: a request the judge stalls 6 s on would then wait the full 6 s."""
    item = {"prompt": "p", "response": f"Sure {SLOW}"}
    t0 = time.monotonic()
    r = httpx.post(f"{service['url']}/v1/judge", json={"items": [item]}, timeout=30,
                   headers={"Authorization": f"Bearer {service['good']}", "x-request-timeout-seconds": "0"})
    took = time.monotonic() - t0
    assert r.status_code in (408, 504) and took < 6.0, (r.status_code, took)


def test_an_oversized_header_is_refused_at_once(service: dict) -> None:
    big = "a" * (ProxyLimits().max_header_bytes + 1024)
    t0 = time.monotonic()
    try:
        status = httpx.get(f"{service['url']}/healthz", headers={"x-big": big}, timeout=10).status_code
    except httpx.RemoteProtocolError:  # closed without an answer: refused too
        status = 431
    assert status in (400, 431) and time.monotonic() - t0 < 3


def test_slow_bodies_and_half_open_connections_do_not_stall_another_client(service: dict) -> None:
    """64 slow-body and 1,000 half-open connections from one client, 10 s of a second client's requests
    with a 5 s deadline: none of those fails, and the proxy closes every attacker connection."""
    result = asyncio.run(probe(service["url"], service["attacker"], service["good"], n_idle=1000, n_slow=64,
                               seconds=HEAD_S + BODY_S + 4, deadline_s=5.0, big_header_bytes=8 << 20))
    print(result.as_dict())  # figures only: no request content
    assert result.idle_opened == 1000 and result.slow_opened == 64
    assert result.good_sent >= 10 and result.good_failed == 0 and result.good_wrong == 0, result.failures
    assert result.slow_answers.get("HTTP/1.1 408 Request Timeout", 0) == 64, result.slow_answers
    assert result.attacker_open_at_end == 0
    assert "431" in result.big_header_status or "400" in result.big_header_status or \
        "closed" in result.big_header_status, result.big_header_status
