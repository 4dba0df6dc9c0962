"""HTTP client of the judge service, used by the batch pipeline (through RemoteJudge) and by other teams.

``JudgeClient(base_url, token).judge(items)`` splits the items into requests of ``batch_size``, sends up
to ``max_concurrency`` of them at once (so the server's dynamic batching has something to merge), and
raises ``JudgeAPIError`` with the server's message for anything it does not retry.

What is retried, and why only that:
- a request that never reached the server (connection refused/reset before sending, connect or pool
  timeouts), and the answers that say the server did no work: 503 (overloaded, replica unavailable) and
  429 (rate limited; its Retry-After is obeyed);
- not a POST that timed out reading the answer: the server had it, and a retry would judge it twice.
  Each POST tells the server how long this client waits (``X-Deadline-S`` = ``timeout``), so the server
  gives up at the same moment (504) and the client's own read timeout is a little longer than that;
- not 4xx (the request is wrong; the message says why) nor other 5xx.
Retries back off exponentially with full jitter, and a retry budget (``RetryBudget``) caps them at a
fraction of the requests sent, so an outage is not multiplied by the retries of every client.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, is_dataclass
from typing import Any

import httpx

from serving.schemas import LABEL_VALUES

RETRY_STATUS = frozenset({429, 503})
# Never sent, so always safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
DEADLINE_HEADER = "X-Deadline-S"
# The client waits this much longer than the deadline it sends, so the server's 504 arrives first.
DEADLINE_MARGIN_S = 2.0
_SECONDS = re.compile(r"^[0-9]{1,6}$")


def _json(resp: httpx.Response) -> Any:
    """The body as JSON, or JudgeAPIError (a proxy's HTML page or a truncated body answered 200)."""
    try:
        return resp.json()
    except (ValueError, UnicodeDecodeError):
        raise JudgeAPIError(f"judge service answered HTTP {resp.status_code} with a body that is not JSON "
                            f"(content type {resp.headers.get('content-type')!r}): is {resp.url} the judge "
                            "service?", status=resp.status_code) from None


def _result_problem(r: Any) -> str | None:
    """Why one result is unusable (not an object, unknown label, a score that is not a number in [0, 1])."""
    if not isinstance(r, dict):
        return f"a {type(r).__name__}, not an object"
    if r.get("label") not in LABEL_VALUES:
        return f"unknown label {r.get('label')!r}"
    score = r.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score) \
            or not 0.0 <= score <= 1.0:
        return f"score {score!r} is not a number in [0, 1]"
    return None


class RetryBudget:
    """At most ``ratio`` retries per request sent, plus a reserve of ``reserve`` (refilled by requests).

    Like Finagle's and gRPC's retry budgets: when most requests fail, retries stop growing the load.
    """

    def __init__(self, ratio: float = 0.2, reserve: float = 10.0) -> None:
        self._ratio, self._cap = ratio, reserve
        self._balance = reserve
        self._lock = threading.Lock()

    def on_request(self) -> None:
        with self._lock:
            self._balance = min(self._cap, self._balance + self._ratio)

    def try_spend(self) -> bool:
        with self._lock:
            if self._balance >= 1.0:
                self._balance -= 1.0
                return True
            return False


class JudgeAPIError(RuntimeError):
    """The judge service answered with an error that retrying will not fix (or retries ran out)."""

    def __init__(self, message: str, status: int | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.limit = status, limit


def _as_item(item: Any) -> dict[str, Any]:
    if is_dataclass(item) and not isinstance(item, type):
        data = asdict(item)
    elif isinstance(item, Mapping):
        data = dict(item)
    else:
        raise TypeError(f"cannot judge an item of type {type(item).__name__}: use JudgeItem or a mapping")
    out = {"prompt": data["prompt"], "response": data["response"]}
    if data.get("language") is not None:
        out["language"] = data["language"]
    return out


class JudgeClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        batch_size: int = 64,
        *,
        max_concurrency: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
        retry_budget: RetryBudget | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if batch_size < 1 or retries < 0 or max_concurrency < 1 or timeout <= 0:
            raise ValueError("batch_size and max_concurrency must be >= 1, retries >= 0, timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.retries, self.batch_size, self.max_concurrency = retries, batch_size, max_concurrency
        self.timeout = timeout
        self._backoff_s, self._max_backoff_s = backoff_s, max_backoff_s
        self.budget = retry_budget or RetryBudget()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport,
            timeout=httpx.Timeout(timeout + DEADLINE_MARGIN_S, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )

    # -- public ---------------------------------------------------------------------------------------
    def judge(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Per item, ``{"label", "score", "judge", "judge_version"}``, in input order."""
        payload = [_as_item(i) for i in items]
        chunks = [payload[i : i + self.batch_size] for i in range(0, len(payload), self.batch_size)]
        if len(chunks) <= 1 or self.max_concurrency == 1:
            results = [self._judge_chunk(c) for c in chunks]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(chunks))) as pool:
                results = list(pool.map(self._judge_chunk, chunks))  # map keeps the order
        return [r for chunk in results for r in chunk]

    def info(self) -> dict[str, Any]:
        info = _json(self._request("GET", "/v1/info"))
        if not isinstance(info, dict):
            raise JudgeAPIError("judge service answered /v1/info with JSON that is not an object")
        return info

    def healthy(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------
    def _judge_chunk(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = _json(self._request("POST", "/v1/judge", json={"items": chunk},
                                   headers={DEADLINE_HEADER: f"{self.timeout:g}"}))
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(chunk):
            raise JudgeAPIError(f"judge service returned a malformed answer for {len(chunk)} items")
        for i, r in enumerate(results):
            problem = _result_problem(r)
            if problem:
                raise JudgeAPIError(f"judge service returned a malformed result for item {i}: {problem}")
        return results

    def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        # Full jitter (uniform in [0, backoff]): retrying clients spread out instead of stampeding.
        delay = random.uniform(0, min(self._max_backoff_s, self._backoff_s * (2**attempt)))
        if retry_after and _SECONDS.match(retry_after):  # ASCII digits only: "²".isdigit() is True too
            delay = max(delay, min(self._max_backoff_s, float(retry_after)))  # the server's wish is a floor
        time.sleep(delay)

    def _retryable(self, method: str, exc: httpx.TransportError) -> bool:
        # Idempotent, cheap GETs may be retried after any transport error; a POST only if never sent.
        return method == "GET" or isinstance(exc, _NOT_SENT)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.budget.on_request()
        for attempt in range(self.retries + 1):
            last_try = attempt == self.retries
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                what = f"{type(exc).__name__} talking to {self.base_url}"
                if not self._retryable(method, exc):
                    raise JudgeAPIError(f"judge service failed after {attempt + 1} tries: {what} (not retried: "
                                        "the server may have received the request)") from exc
                if last_try or not self.budget.try_spend():
                    raise JudgeAPIError(f"judge service unreachable after {attempt + 1} tries: {what}"
                                        f"{self._budget_note(last_try)}") from exc
                self._sleep_before_retry(attempt, None)
                continue
            if resp.status_code < 400:
                return resp
            if resp.status_code in RETRY_STATUS and not last_try and self.budget.try_spend():
                self._sleep_before_retry(attempt, resp.headers.get("retry-after"))
                continue
            raise self._error(resp, attempt + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _budget_note(last_try: bool) -> str:
        return "" if last_try else " (retry budget of this client spent: too many failures)"

    @staticmethod
    def _error(resp: httpx.Response, tries: int) -> JudgeAPIError:
        detail, limit = resp.reason_phrase, None
        try:
            body = resp.json()
            if isinstance(body, dict):
                detail = str(body.get("detail", detail))
                limit = body.get("limit")
        except ValueError:
            pass
        hint = " (check the token: SAFEDRIFT_JUDGE_TOKEN)" if resp.status_code == 401 else ""
        return JudgeAPIError(
            f"judge service answered HTTP {resp.status_code} after {tries} tries: {detail}{hint}",
            status=resp.status_code, limit=limit,
        )
