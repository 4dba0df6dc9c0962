"""HTTP ingress of the judge service: FastAPI routes, bearer auth, request limits, error mapping.

Kept apart from the judge deployment so that cheap HTTP work (auth, parsing, validation) scales on its
own replicas and never waits behind a model batch, and so that in-cluster callers can reach the
batched judge through a deployment handle without HTTP. The body is read and validated here by hand,
not by FastAPI's body parameter, so each limit gets its own status (413 vs 422) and a message naming it.

Request content is never logged: only request ids, the client's name (never its token), item counts,
character totals, status and time.

Bounded work: a request is authenticated and rate-limited before its body is read; its body, item count
and field lengths are capped; it carries a deadline (``judge_timeout_s``, or less when the client sends
``X-Deadline-S``) to the judge deployment, which drops it unjudged once that passes or when the client
goes away (the handler's cancellation cancels the downstream call).
"""

# No `from __future__ import annotations`: Serve re-wraps the route methods, and FastAPI must see real
# annotation objects (string annotations would resolve in the wrong module; `request` became a query).

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from serving.auth import TokenChecker, check_exposure
from serving.config import JudgeServiceConfig
from serving.proxy import CALLBACK, CALLBACK_ENV, GUARD_HEADER
from serving.ratelimit import RateLimiter
from serving.schemas import ErrorResponse, JudgeRequest, JudgeResponse

logger = logging.getLogger("ray.serve")

API_VERSION = "1"
_TEXT_FIELDS = ("prompt", "response")
DEADLINE_HEADER = "x-deadline-s"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# A replica that died or is being replaced: the request was not answered, and judging is a pure
# function of the items, so one more try on another replica is safe.
_REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


class APIError(Exception):
    def __init__(self, status: int, detail: str, limit: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.limit, self.headers = status, detail, limit, headers


def _request_id(request: Request) -> str:
    # Serve assigns every request an id (returned as X-Request-Id); reuse it so logs line up. A client may
    # send its own (Serve keeps it unless serving/proxy.py drops it): only a plain token is logged as one,
    # so an unauthenticated client cannot write what it likes into request-log lines.
    if (known := request.scope.get("safedrift.request_id")) is not None:
        return str(known)  # one id per request: its log line and its error body name the same
    rid: object = None
    with contextlib.suppress(Exception):  # private API: never let it break a request
        rid = serve.context._get_serve_request_context().request_id
    rid = rid or request.headers.get("x-request-id")
    rid = rid if isinstance(rid, str) and _SAFE_ID.match(rid) else uuid.uuid4().hex
    request.scope["safedrift.request_id"] = rid
    return rid


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:40]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of repeated keys: what a validating proxy and this service read would differ.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _error(request: Request, status: int, detail: str, limit: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(detail=detail, limit=limit, request_id=_request_id(request))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _describe_validation(exc: ValidationError) -> str:
    # Location and error type only: pydantic's default message embeds the input, i.e. request content.
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg', err.get('type', 'invalid'))}")
    more = exc.error_count() - len(parts)
    return "invalid request: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


app = FastAPI(
    redirect_slashes=False,  # a 307 to "/v1/judge" would make clients re-send bodies; answer 404 instead
    title="safedrift judge",
    version=API_VERSION,
    description=(
        "Judges whether a model's response complies with or refuses a request. "
        "Send `Authorization: Bearer <token>`. Limits (items per request, characters per field, body "
        "bytes) come from the service config and are listed by `GET /v1/info`. `X-Deadline-S: <seconds>` "
        "asks the service to give up (504) sooner than its own judge_timeout_s."
    ),
    # Docs are served by JudgeIngress below, and only when the config's api_docs is true.
    docs_url=None, redoc_url=None, openapi_url=None,
)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return _error(request, exc.status, exc.detail, exc.limit, exc.headers)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The exception's type only: its message may quote request content.
    logger.error("unhandled error request_id=%s type=%s", _request_id(request), type(exc).__name__)
    return _error(request, 500, "internal error")


def _openapi() -> dict[str, Any]:
    # The judge route parses its body by hand (see module doc); publish the request schema anyway.
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    req = JudgeRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(req.pop("$defs", {}))
    components["JudgeRequest"] = req
    app.openapi_schema = schema
    return schema


app.openapi = _openapi  # type: ignore[method-assign]

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 429, 503, 504)}
_JUDGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JudgeRequest"}}},
    }
}


@serve.deployment(name="JudgeIngress")
@serve.ingress(app)
class JudgeIngress:
    def __init__(self, backend: DeploymentHandle, config: dict[str, Any]) -> None:
        self._cfg = JudgeServiceConfig.model_validate(config)
        self._limits = self._cfg.limits
        # The same fail-closed rule as the app builder, again here: a replica may be built by other code,
        # and its environment (where the token source lives) is what counts.
        check_exposure(self._cfg.auth.required, "judge ingress")
        self._auth = TokenChecker(required=self._cfg.auth.required, reload_s=self._cfg.auth.reload_s,
                                  overlap_s=self._cfg.auth.rotation_overlap_s)
        self._rate = RateLimiter(self._cfg.rate_limits)
        self._backend = backend
        self._ready: tuple[float, dict[str, Any] | None] | None = None  # (checked at, info or None)
        self._ready_probe: asyncio.Future[dict[str, Any] | None] | None = None
        self._proxy_warned = False
        if not self._auth.enabled:
            logger.warning("judge ingress: no token configured, authentication is OFF (loopback use only)")
        else:
            logger.info("judge ingress: %d client token(s): %s", len(self._auth.clients), ", ".join(self._auth.clients))

    # -- probes: no auth, so Kubernetes and load balancers can use them; cheap, so anyone may --------------
    @app.get("/healthz", summary="liveness")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="readiness: the judge deployment answers", responses={503: {"model": ErrorResponse}})
    async def readyz(self, request: Request) -> Any:
        info = await self._readiness()
        if info is None:
            return _error(request, 503, "judge deployment not ready")
        return {"status": "ready", "judge": info["judge"], "judge_version": info["judge_version"]}

    async def _readiness(self) -> dict[str, Any] | None:
        # One probe of the judge deployment per readiness_cache_s, shared by every caller meanwhile.
        if self._ready is not None and time.monotonic() - self._ready[0] < self._cfg.readiness_cache_s:
            return self._ready[1]
        if self._ready_probe is None or self._ready_probe.done():
            self._ready_probe = asyncio.ensure_future(self._probe_backend())
        return await asyncio.shield(self._ready_probe)

    async def _probe_backend(self) -> dict[str, Any] | None:
        info: dict[str, Any] | None = None
        try:
            info = await asyncio.wait_for(self._backend.info.remote(), timeout=5.0)
        except Exception as exc:
            logger.warning("readyz: judge not ready type=%s", type(exc).__name__)
        self._ready = (time.monotonic(), info)
        return info

    # -- docs: off unless api_docs ----------------------------------------------------------------------
    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(self, request: Request) -> Any:
        self._docs_enabled()
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        self._docs_enabled()
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} - docs")

    def _docs_enabled(self) -> None:
        if not self._cfg.api_docs:
            raise APIError(404, "Not Found")  # as if the route did not exist

    # -- API ------------------------------------------------------------------------------------------
    @app.get("/v1/info", summary="the served judge and the request limits", responses=_ERRORS)
    async def info(self, request: Request) -> dict[str, Any]:
        self._rate_limit(self._authorize(request))
        info = await asyncio.wait_for(self._backend.info.remote(), timeout=self._cfg.judge_timeout_s)
        info = {k: v for k, v in info.items() if k != "replica"}  # process ids are for operators only
        return {**info, "api_version": API_VERSION, "limits": self._limits.model_dump()}

    @app.post("/v1/judge", response_model=JudgeResponse, openapi_extra=_JUDGE_BODY, responses=_ERRORS,
              summary="judge a batch of (prompt, response) items")
    async def judge(self, request: Request) -> Any:
        started = time.perf_counter()
        self._check_proxy(request)
        rid, client = _request_id(request), "-"
        status, n_items, n_chars = 500, 0, 0
        try:
            client = self._authorize(request)
            self._rate_limit(client)
            deadline = time.time() + self._timeout(request)
            body = await self._read_body(request)
            items = self._parse(body)
            n_items = len(items)
            n_chars = sum(len(i["prompt"]) + len(i["response"]) for i in items)
            results = await self._call_judge(items, deadline)
            status = 200
            return {"results": results}
        except APIError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code); the judge call was cancelled with it
            raise
        finally:
            logger.info("judge request_id=%s client=%s status=%d items=%d chars=%d ms=%.1f", rid, client, status,
                        n_items, n_chars, (time.perf_counter() - started) * 1000)

    # -- steps ----------------------------------------------------------------------------------------
    def _check_proxy(self, request: Request) -> None:
        """Warns once when requests reach this replica through a proxy without serving/proxy.py's limits
        (a `serve run` or RayService whose Ray nodes lack the callback variable)."""
        if self._proxy_warned or GUARD_HEADER.decode() in request.headers:
            return
        self._proxy_warned = True
        logger.warning("judge ingress: Serve's HTTP proxy runs without safedrift's limits (one client can hold "
                       "connections and replica slots): start the Ray nodes with %s=%s", CALLBACK_ENV, CALLBACK)

    def _authorize(self, request: Request) -> str:
        """The client's name (``anonymous`` when auth is off), or 401."""
        header = request.headers.get("authorization")
        if not self._auth.enabled and self._auth.check(header):
            return "anonymous"
        name = self._auth.identify(header)
        if name is None:
            raise APIError(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        return name

    def _rate_limit(self, client: str) -> None:
        wait = self._rate.acquire(client)
        if wait is not None:
            limit = self._cfg.rate_limits.for_client(client)
            assert limit is not None  # acquire() only waits on a configured limit
            raise APIError(429, f"rate limit of client {client!r} ({limit.requests_per_s:g} requests/s, burst "
                                f"{limit.burst}) exceeded; retry after {wait:.2f} s", "rate_limits",
                           headers={"Retry-After": RateLimiter.retry_after(wait)})

    def _timeout(self, request: Request) -> float:
        raw = request.headers.get(DEADLINE_HEADER)
        if raw is None:
            return self._cfg.judge_timeout_s
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise APIError(400, "X-Deadline-S must be a number of seconds > 0 (how long the client will wait)")
        return min(value, self._cfg.judge_timeout_s)

    async def _read_body(self, request: Request) -> bytes:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise APIError(415, "content type must be application/json")
        limit = self._limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise APIError(400, "invalid Content-Length header")
            if int(declared) > limit:
                raise APIError(413, f"body of {declared} bytes exceeds max_body_bytes={limit}", "max_body_bytes")
        # Count while reading as well: a chunked body declares no length.
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"body exceeds max_body_bytes={limit}", "max_body_bytes")
        return bytes(body)

    def _parse(self, body: bytes) -> list[dict[str, Any]]:
        try:
            text = body.decode("utf-8")  # json.loads(bytes) would also take UTF-16 and UTF-32 (RFC 8259: UTF-8)
        except UnicodeDecodeError as exc:
            raise APIError(422, f"body is not UTF-8 (invalid byte at {exc.start}); send JSON encoded as UTF-8") from None
        if "\x00" in text:  # valid UTF-8, but what UTF-16/32 text looks like; JSON text never holds a raw NUL
            raise APIError(422, "body is not UTF-8 JSON (it holds NUL bytes: UTF-16 or UTF-32?); send UTF-8")
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise APIError(422, f"body repeats the key {exc.key!r} in one object; send each key once") from None
        except (ValueError, RecursionError):  # bad JSON, a BOM, absurd nesting or numbers
            raise APIError(422, "body is not valid JSON") from None
        max_items = self._limits.max_items
        if isinstance(data, dict) and isinstance(data.get("items"), list) and len(data["items"]) > max_items:
            raise APIError(413, f"{len(data['items'])} items exceed max_items={max_items}", "max_items")
        try:
            req = JudgeRequest.model_validate(data)  # also rejects invalid Unicode (lone surrogates)
        except ValidationError as exc:
            raise APIError(422, _describe_validation(exc)) from None
        max_chars = self._limits.max_field_chars
        for idx, item in enumerate(req.items):
            for field in _TEXT_FIELDS:
                n = len(getattr(item, field))
                if n > max_chars:
                    raise APIError(422, f"items.{idx}.{field} has {n} characters, over max_field_chars={max_chars}",
                                   "max_field_chars")
        return [item.model_dump() for item in req.items]

    async def _call_judge(self, items: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
        if not items:
            return []
        for attempt in range(2):
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            response = self._backend.judge_outcome.remote(items, deadline)
            try:
                outcome = await asyncio.wait_for(response, timeout=remaining)
            except asyncio.CancelledError:
                response.cancel()  # the client went away: the judge deployment drops the request
                raise
            except BackPressureError:
                raise APIError(503, "judge overloaded, retry later", headers={"Retry-After": "1"}) from None
            except TimeoutError:
                response.cancel()
                raise self._deadline_error() from None
            except _REPLICA_GONE as exc:
                logger.warning("judge replica unavailable type=%s attempt=%d", type(exc).__name__, attempt + 1)
                continue
            except Exception as exc:
                # Type only: a judge's exception message may quote the items it failed on.
                logger.error("judge call failed type=%s items=%d", type(exc).__name__, len(items))
                raise APIError(500, "judge failed") from None
            if "results" in outcome:
                return outcome["results"]
            if "item_error" in outcome:
                err = outcome["item_error"]
                raise APIError(422, f"items.{err['index']}: {err['reason']}")
            if "judge_unavailable" in outcome:  # not the items' fault: retryable, and seen by 5xx alerting
                logger.error("judge unavailable type=%s items=%d", outcome["judge_unavailable"], len(items))
                raise APIError(503, "the judge is failing on known-good input too (not this request's fault); "
                                    "retry later", headers={"Retry-After": "1"})
            raise self._deadline_error()  # deadline_exceeded: dropped unjudged
        if deadline - time.time() > 0:  # a replica died twice in a row (it is being replaced)
            raise APIError(503, "judge replica unavailable, retry later", headers={"Retry-After": "1"})
        raise self._deadline_error()

    def _deadline_error(self) -> APIError:
        return APIError(504, f"judge did not answer within the deadline (judge_timeout_s="
                             f"{self._cfg.judge_timeout_s}, or the client's X-Deadline-S)", "judge_timeout_s")
