"""Limits in Serve's HTTP proxy, where one client could otherwise stall every other (issue 30).

Ray Serve 2.60's proxy (uvicorn with h11) has no deadline for reading a request's head or body, and it
honours a client's ``x-request-timeout-seconds: 0`` (Serve's per-request switch that turns the request
timeout off). Measured before this module (benchmarks/serving/RESULTS.md): 20 slow-body connections made
two other clients time out at 15 s; 1,000 half-open connections stayed open indefinitely.

Installed in the proxy process through Serve's own hook: ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
names ``proxy_middlewares``, which the proxy calls as it starts. ``safedrift serve`` sets it before it
starts Ray; with ``serve run`` or a RayService, set it in the environment of the Ray nodes (the README's
deployment section). It does three things:

- a connection that has not sent a complete request head within ``header_timeout_s`` (half-open, idle,
  or trickling headers) is closed, and a head over ``max_header_bytes`` is answered 431 and closed;
- a request's body is read whole in the proxy, within ``body_timeout_s`` (else 408) and up to
  ``max_body_bytes`` (else 413), before the ingress sees it, so a slow body never holds a replica slot;
- the client's ``x-request-timeout-seconds``, ``x-request-disconnect-disabled`` and ``x-request-id`` are
  dropped: Serve's request timeout (``http_options.request_timeout_s``) holds for every request, and the
  request id in the logs is Serve's own, not one an unauthenticated client chose.

The limits come from ``SAFEDRIFT_PROXY_*`` environment variables of the proxy process (``LIMIT_ENVS``),
with the defaults below; a value that is not a positive number stops the proxy with a message naming it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("ray.serve")

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serving.proxy:proxy_middlewares"
GUARD_HEADER = b"x-safedrift-proxy-limits"  # on every response of a guarded proxy: how a start path checks it
DROPPED_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled", b"x-request-id"})
LIMIT_ENVS = {
    "header_timeout_s": "SAFEDRIFT_PROXY_HEADER_TIMEOUT_S",
    "body_timeout_s": "SAFEDRIFT_PROXY_BODY_TIMEOUT_S",
    "max_header_bytes": "SAFEDRIFT_PROXY_MAX_HEADER_BYTES",
    "max_body_bytes": "SAFEDRIFT_PROXY_MAX_BODY_BYTES",
}
_SWEEP_S = 1.0  # how often connections still waiting for a request head are checked

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ProxyLimits:
    # Above uvicorn's keep-alive (5 s): an idle keep-alive connection is closed by uvicorn first.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0  # 4 MiB (max_body_bytes of judge.yaml) at 140 KB/s
    max_header_bytes: int = 16 * 1024  # h11's own default, now applied to every HTTP implementation
    max_body_bytes: int = 8 * 1024 * 1024  # over the app's 4 MiB: the ingress names its own limit first

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProxyLimits:
        values: dict[str, float | int] = {}
        for field, name in LIMIT_ENVS.items():
            raw = env.get(name, "").strip()
            if not raw:
                continue
            kind = int if field.startswith("max_") else float
            try:
                value = kind(raw)
            except ValueError:
                value = 0
            if not value > 0:
                raise ValueError(f"{name}={raw!r}: give a positive {'whole ' if kind is int else ''}number "
                                 f"({field}, default {getattr(cls(), field)})")
            values[field] = value
        return cls(**values)  # type: ignore[arg-type]


def proxy_middlewares() -> list[Any]:
    """Serve's proxy callback: installs the connection limits and returns the body guard middleware."""
    from starlette.middleware import Middleware

    limits = ProxyLimits.from_env(os.environ)
    install_connection_limits(limits)
    logger.info("safedrift proxy limits: %s", limits)
    return [Middleware(BodyGuard, limits=limits)]


# ---- connections: the request head's deadline and size ----------------------------------------------

_WAITING: weakref.WeakSet[Any] = weakref.WeakSet()  # protocols waiting for a request head


def _waiting_for_head(proto: Any) -> bool:
    cycle = getattr(proto, "cycle", None)
    return cycle is None or bool(getattr(cycle, "response_complete", False))


def _reject(proto: Any, status: bytes) -> None:
    transport = proto.transport
    if transport is not None and not transport.is_closing():
        transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        transport.close()


def _sweep(loop: asyncio.AbstractEventLoop, limits: ProxyLimits) -> None:
    now = time.monotonic()
    for proto in list(_WAITING):
        since = getattr(proto, "_sd_waiting_since", None)
        if since is not None and _waiting_for_head(proto) and now - since > limits.header_timeout_s:
            _reject(proto, b"408 Request Timeout")
            _WAITING.discard(proto)
    loop.call_later(_SWEEP_S, _sweep, loop, limits)


def _patch(cls: type, limits: ProxyLimits) -> None:
    """Wraps one uvicorn protocol class: head bytes counted and timed from the connection (or the last
    response) until a request's head is parsed."""
    if getattr(cls, "_sd_limits", None) is not None:
        return
    made, received, done = cls.connection_made, cls.data_received, cls.on_response_complete
    sweeping: list[bool] = []

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        self._sd_head_bytes, self._sd_waiting_since = 0, time.monotonic()
        _WAITING.add(self)
        if not sweeping:  # one sweeper per proxy process, on its event loop
            sweeping.append(True)
            self.loop.call_later(_SWEEP_S, _sweep, self.loop, limits)

    def data_received(self: Any, data: bytes) -> None:
        waiting = _waiting_for_head(self)
        received(self, data)
        if not waiting or not _waiting_for_head(self):  # a head was parsed: its body is the guard's
            self._sd_head_bytes, self._sd_waiting_since = 0, None
            return
        self._sd_head_bytes += len(data)
        if self._sd_head_bytes > limits.max_header_bytes:
            _reject(self, b"431 Request Header Fields Too Large")

    def on_response_complete(self: Any) -> None:
        done(self)
        self._sd_head_bytes, self._sd_waiting_since = 0, time.monotonic()

    cls.connection_made, cls.data_received = connection_made, data_received  # type: ignore[method-assign]
    cls.on_response_complete = on_response_complete  # type: ignore[method-assign]
    cls._sd_limits = limits  # type: ignore[attr-defined]


def install_connection_limits(limits: ProxyLimits) -> None:
    """Patches uvicorn's HTTP/1.1 protocols in this process (h11, and httptools where installed): uvicorn
    has no setting for a head deadline, and only h11 has one for its size."""
    from uvicorn.protocols.http import h11_impl

    _patch(h11_impl.H11Protocol, limits)
    h11_impl.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE = limits.max_header_bytes  # h11's own check, same bound
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # httptools not installed: uvicorn uses h11
        return
    _patch(httptools_impl.HttpToolsProtocol, limits)


# ---- requests: the body's deadline and size, and the headers a client may not set ------------------

class BodyGuard:
    """ASGI middleware in the proxy: reads the body whole within the limits before the app sees it."""

    def __init__(self, app: Callable[..., Awaitable[None]], limits: ProxyLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A head that arrived in one read was parsed whole, whatever its size (h11 bounds incomplete ones).
        head = sum(len(k) + len(v) + 4 for k, v in scope["headers"]) + len(scope.get("raw_path") or b"")
        if head > self.limits.max_header_bytes:
            await _respond(send, 431, f"request head of {head} bytes over {self.limits.max_header_bytes} "
                                      "(SAFEDRIFT_PROXY_MAX_HEADER_BYTES)")
            return
        # The marker tells the ingress this request came through the limits (a client's own copy dropped).
        kept = [(k, v) for k, v in scope["headers"] if k.lower() not in DROPPED_HEADERS and k.lower() != GUARD_HEADER]
        scope = {**scope, "headers": [*kept, (GUARD_HEADER, b"1")]}
        outcome = await self._read_body(receive)
        if isinstance(outcome, tuple):
            await _respond(send, *outcome)
            return
        if outcome is None:
            return  # the client went away while sending its body
        pending = [{"type": "http.request", "body": outcome, "more_body": False}]

        async def replay() -> dict[str, Any]:
            return pending.pop() if pending else await receive()  # then disconnects, as usual

        await self.app(scope, replay, _marked(send))

    async def _read_body(self, receive: Receive) -> bytes | tuple[int, str] | None:
        """The body; (status, message) over a limit; None when the client disconnected."""
        loop, chunks, size = asyncio.get_running_loop(), [], 0
        deadline = loop.time() + self.limits.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return 408, (f"request body not received within {self.limits.body_timeout_s:g} s "
                             f"(SAFEDRIFT_PROXY_BODY_TIMEOUT_S); send it at once")
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                return 413, f"request body over {self.limits.max_body_bytes} bytes (SAFEDRIFT_PROXY_MAX_BODY_BYTES)"
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _marked(send: Send) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (GUARD_HEADER, b"1")]}
        await send(message)

    return wrapped


async def _respond(send: Send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail, "limit": "proxy"}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (GUARD_HEADER, b"1")]})
    await send({"type": "http.response.body", "body": body})
