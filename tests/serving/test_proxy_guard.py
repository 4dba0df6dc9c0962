"""serving/proxy.py's body guard as an ASGI middleware in this process (no Ray: fast), in front of a
small ASGI app that echoes what reached it. The same middleware runs in Serve's proxy in
test_proxy_limits.py (marked slow: it starts `safedrift serve`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from serving.proxy import GUARD_HEADER, BodyGuard, ProxyLimits

LIMITS = ProxyLimits(header_timeout_s=1.0, body_timeout_s=0.3, max_header_bytes=2048, max_body_bytes=1000)


async def _echo(scope: dict, receive: Any, send: Any) -> None:
    """What the app behind the guard saw: its headers and its body (read as Serve's proxy reads it)."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    out = json.dumps({"headers": sorted(k.decode() for k, _ in scope["headers"]), "body": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": out})


def _call(headers: list[tuple[bytes, bytes]], chunks: list[tuple[float, bytes]]) -> tuple[int, dict, dict]:
    """Sends the body in `chunks` (delay before each, bytes); returns (status, response headers, body)."""
    async def run() -> tuple[int, dict, dict]:
        queue = list(chunks)
        sent: list[dict] = []

        async def receive() -> dict:
            if not queue:
                await asyncio.sleep(10)
                return {"type": "http.disconnect"}
            delay, data = queue.pop(0)
            await asyncio.sleep(delay)
            return {"type": "http.request", "body": data, "more_body": bool(queue)}

        async def send(msg: dict) -> None:
            sent.append(msg)

        scope = {"type": "http", "method": "POST", "raw_path": b"/v1/judge", "headers": headers}
        await BodyGuard(_echo, LIMITS)(scope, receive, send)
        start = sent[0]
        return start["status"], dict(start["headers"]), json.loads(sent[1]["body"])

    return asyncio.run(run())


def test_a_client_cannot_switch_the_request_timeout_off_or_choose_the_request_id() -> None:
    status, headers, seen = _call([(b"x-request-timeout-seconds", b"0"), (b"x-request-disconnect-disabled", b"?1"),
                                   (b"X-Request-Id", b"forged"), (b"authorization", b"Bearer x")], [(0, b"{}")])
    assert status == 200 and headers[GUARD_HEADER] == b"1"
    assert seen == {"headers": ["authorization", GUARD_HEADER.decode()], "body": 2}  # marked for the ingress


def test_a_body_in_pieces_within_the_deadline_reaches_the_app_whole() -> None:
    status, _, seen = _call([], [(0.05, b"a" * 300), (0.05, b"b" * 300), (0.05, b"c" * 300)])
    assert status == 200 and seen["body"] == 900


@pytest.mark.parametrize(("chunks", "status", "says"), [
    ([(0.0, b"{")] + [(0.1, b" ")] * 10, 408, "SAFEDRIFT_PROXY_BODY_TIMEOUT_S"),  # a slow body: cut at 0.3 s
    ([(0.0, b"a" * 600), (0.0, b"a" * 600)], 413, "SAFEDRIFT_PROXY_MAX_BODY_BYTES"),
])
def test_slow_or_oversized_bodies_are_answered_by_the_proxy(chunks: list, status: int, says: str) -> None:
    got, headers, body = _call([], chunks)
    assert got == status and says in body["detail"] and headers[b"connection"] == b"close"


def test_an_oversized_head_is_431() -> None:
    status, _, body = _call([(b"x-big", b"a" * 3000)], [(0, b"{}")])
    assert status == 431 and "SAFEDRIFT_PROXY_MAX_HEADER_BYTES" in body["detail"]


def test_limits_from_the_environment_name_a_bad_value() -> None:
    assert ProxyLimits.from_env({"SAFEDRIFT_PROXY_BODY_TIMEOUT_S": "2.5"}).body_timeout_s == 2.5
    with pytest.raises(ValueError, match="SAFEDRIFT_PROXY_MAX_HEADER_BYTES='0': give a positive whole number"):
        ProxyLimits.from_env({"SAFEDRIFT_PROXY_MAX_HEADER_BYTES": "0"})


SERVER = """
import sys, uvicorn
from serving.proxy import BodyGuard, ProxyLimits, install_connection_limits

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

limits = ProxyLimits(header_timeout_s=0.5, body_timeout_s=0.5, max_header_bytes=4096, max_body_bytes=1000)
install_connection_limits(limits)
uvicorn.run(BodyGuard(app, limits), host="127.0.0.1", port=int(sys.argv[1]), http="h11", log_level="error")
"""


def test_uvicorn_with_the_connection_limits_closes_half_open_connections_and_big_heads() -> None:
    """The connection-level half of serving/proxy.py on a real uvicorn (as in Serve's proxy), in its own
    process (the patch is process-wide): 50 half-open connections are closed after the head deadline, a
    head over the bound gets 431, an ordinary request is answered meanwhile."""
    import socket
    import subprocess
    import sys
    import time

    import httpx
    from judge_service_cases import REPO, free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        half_open = []
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\n")
            half_open.append(s)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "ok"
        trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
        trickle.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 6000)  # never finished, over 4096
        assert trickle.recv(100)[:12] in (b"HTTP/1.1 431", b"HTTP/1.1 400")  # ours, or h11's own bound (now ours)
        time.sleep(2.0)  # past the 0.5 s head deadline and one sweep
        closed = 0
        for s in half_open:
            s.settimeout(2)
            data = s.recv(100)  # 408 then EOF, or EOF
            closed += data == b"" or data.startswith(b"HTTP/1.1 408")
        assert closed == 50
    finally:
        server.terminate()
        server.wait(timeout=10)
