"""One client against the judge service's HTTP proxy, the way issue 30 found it could stall every other:
many half-open connections (half a request head, then silence), many slow bodies (a full head, then a
byte every half second), one oversized header; meanwhile a second client sends ordinary requests with a
deadline. Used by ``bench_proxy.py`` (figures for RESULTS.md) and by tests/serving/test_proxy_limits.py.

Only against 127.0.0.1: the counts and the duration are bounded by the caller's arguments."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

ITEM = {"prompt": "How do I bake sourdough bread?", "response": "I'm sorry, I can't help with that."}


@dataclass
class ProbeResult:
    good_sent: int = 0
    good_ok: int = 0
    good_failed: int = 0  # not 200, or not answered within the deadline
    good_wrong: int = 0  # answered 200 with a wrong label: data lost
    good_p50_ms: float = 0.0
    good_max_ms: float = 0.0
    idle_opened: int = 0
    slow_opened: int = 0
    attacker_open_at_end: int = 0  # attacker connections the server had not closed when the run ended
    slow_answers: dict[str, int] = field(default_factory=dict)  # status line -> count
    big_header_status: str = ""
    big_header_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, TimeoutError):
        return None


async def _half_open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    conn = await _open(host, port)
    if conn is not None:
        conn[1].write(b"POST /v1/judge HTTP/1.1\r\nHost: probe\r\n")  # half a head, never finished
    return conn


async def _slow_body(host: str, port: int, token: str, until: float, answers: dict[str, int]) -> bool:
    conn = await _open(host, port)
    if conn is None:
        return False
    reader, writer = conn
    writer.write(f"POST /v1/judge HTTP/1.1\r\nHost: probe\r\nAuthorization: Bearer {token}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{".encode())
    try:
        while time.monotonic() < until:
            writer.write(b" ")
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), 0.5)
            except TimeoutError:
                continue
            status = line.decode(errors="replace").strip() or "closed"
            answers[status] = answers.get(status, 0) + 1
            return True
    except (ConnectionError, OSError):
        answers["reset"] = answers.get("reset", 0) + 1
        return True
    finally:
        writer.close()
    answers["no answer (still open)"] = answers.get("no answer (still open)", 0) + 1
    return True


async def _big_header(host: str, port: int, size: int, result: ProbeResult) -> None:
    conn = await _open(host, port)
    if conn is None:
        result.big_header_status = "connect failed"
        return
    reader, writer = conn
    t0 = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nX-Big: ")
        chunk = b"a" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.write(b"\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        result.big_header_status = line.decode(errors="replace").strip() or "closed"
    except (ConnectionError, OSError) as exc:
        result.big_header_status = f"closed by the server ({type(exc).__name__})"
    except TimeoutError:
        result.big_header_status = "no answer in 30 s"
    finally:
        result.big_header_s = round(time.monotonic() - t0, 2)
        writer.close()


async def _good_client(url: str, token: str, seconds: float, deadline_s: float, result: ProbeResult) -> None:
    import httpx

    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=deadline_s, headers=headers) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            result.good_sent += 1
            try:
                r = await client.post(f"{url}/v1/judge", json={"items": [ITEM]})
            except httpx.HTTPError as exc:
                result.good_failed += 1
                result.failures[type(exc).__name__] = result.failures.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.monotonic() - t0)
            if r.status_code != 200:
                result.good_failed += 1
                result.failures[str(r.status_code)] = result.failures.get(str(r.status_code), 0) + 1
            elif r.json()["results"][0]["label"] != "refused":
                result.good_wrong += 1
            else:
                result.good_ok += 1
            await asyncio.sleep(0.05)
    if latencies:
        latencies.sort()
        result.good_p50_ms = round(latencies[len(latencies) // 2] * 1000, 1)
        result.good_max_ms = round(latencies[-1] * 1000, 1)


async def probe(url: str, attacker_token: str, good_token: str, n_idle: int = 1000, n_slow: int = 64,
                seconds: float = 10.0, deadline_s: float = 5.0, big_header_bytes: int = 0) -> ProbeResult:
    """Runs the attack for `seconds` while the good client works; returns the figures."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    result = ProbeResult()
    idle = [c for c in await asyncio.gather(*(_half_open(host, int(port)) for _ in range(n_idle))) if c]
    result.idle_opened = len(idle)
    until = time.monotonic() + seconds
    slow = [asyncio.ensure_future(_slow_body(host, int(port), attacker_token, until, result.slow_answers))
            for _ in range(n_slow)]
    tasks = [_good_client(url, good_token, seconds, deadline_s, result)]
    if big_header_bytes:
        tasks.append(_big_header(host, int(port), big_header_bytes, result))
    await asyncio.gather(*tasks)
    result.slow_opened = sum(await asyncio.gather(*slow))
    result.slow_answers = dict(result.slow_answers)
    closed = await asyncio.gather(*(_closed(r) for r, _ in idle))
    result.attacker_open_at_end = closed.count(False) + result.slow_answers.get("no answer (still open)", 0)
    for _, writer in idle:
        writer.close()
    return result


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True when the server closed the connection (EOF, a reset, or an error answer then EOF)."""
    try:
        await asyncio.wait_for(reader.read(), 0.05)
        return True
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        return True


# ---- the service under probe: `safedrift serve` in its own process, on its own local Ray cluster ---------

def probe_config(port: int, request_timeout_s: float = 120.0) -> dict[str, Any]:
    """serving/judge.yaml's shape on 127.0.0.1:`port`, with the simulated judge (stalls 6 s on SLOW)."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": request_timeout_s,
                         "keep_alive_timeout_s": 5},
        "applications": [{"name": "judge-probe", "route_prefix": "/", "import_path": "serving.app:build_app", "args": {
            "judge": {"name": "simulated-model", "import_modules": ["benchmarks.serving.sim_judge"],
                      "validity": False, "options": {"call_s": 0.01, "item_s": 0.0, "slow_marker": SLOW,
                                                     "slow_s": 6.0}},
            "ingress": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.25}},
            "backend": {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.25}},
            "auth": {"required": True}, "rate_limits": {"default": None}, "judge_timeout_s": 30,
        }}],
    }


SLOW = "[[slow]]"


def start_serve(config_path: str, port: int, env: dict[str, str], cwd: str, ready_s: float = 240) -> Any:
    """`safedrift serve` as a user starts it; returns the process once /healthz answers."""
    import subprocess
    import sys

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--serve-config", config_path,
                             "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"safedrift serve exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_serve(proc)
    raise RuntimeError("safedrift serve never became ready")


def stop_serve(proc: Any) -> None:
    import os
    import signal
    import subprocess

    os.killpg(proc.pid, signal.SIGINT)  # serve_judge deletes the app; Ray's local cluster ends with it
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
