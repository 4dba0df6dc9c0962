"""HTTP client of the judge service, used by the batch pipeline (through RemoteJudge) and by other teams.

``JudgeClient(base_url, token).judge(items)`` splits the items into requests of ``batch_size``, sends up
to ``max_concurrency`` of them at once (so the server's dynamic batching has something to merge),
retries 503 (overload) and connection errors with exponential backoff, and raises ``JudgeAPIError``
with the server's message for anything else.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, is_dataclass
from typing import Any

import httpx

from serving.schemas import LABEL_VALUES

RETRY_STATUS = frozenset({503})


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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if batch_size < 1 or retries < 0 or max_concurrency < 1:
            raise ValueError("batch_size and max_concurrency must be >= 1, retries >= 0")
        self.base_url = base_url.rstrip("/")
        self.retries, self.batch_size, self.max_concurrency = retries, batch_size, max_concurrency
        self._backoff_s, self._max_backoff_s = backoff_s, max_backoff_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport,
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
        return self._request("GET", "/v1/info").json()

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
        body = self._request("POST", "/v1/judge", json={"items": chunk}).json()
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(chunk):
            raise JudgeAPIError(f"judge service returned a malformed answer for {len(chunk)} items")
        for r in results:
            if r.get("label") not in LABEL_VALUES:
                raise JudgeAPIError(f"judge service returned an unknown label {r.get('label')!r}")
        return results

    def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self._max_backoff_s, self._backoff_s * (2**attempt))
        if retry_after and retry_after.isdigit():
            delay = min(self._max_backoff_s, max(delay, float(retry_after)))
        time.sleep(delay * (0.5 + random.random() / 2))  # jitter: retrying clients do not stampede

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                last = f"{type(exc).__name__} talking to {self.base_url}"
                if attempt < self.retries:
                    self._sleep_before_retry(attempt, None)
                    continue
                raise JudgeAPIError(f"judge service unreachable after {attempt + 1} tries: {last}") from exc
            if resp.status_code < 400:
                return resp
            if resp.status_code in RETRY_STATUS and attempt < self.retries:
                last = f"HTTP {resp.status_code}"
                self._sleep_before_retry(attempt, resp.headers.get("retry-after"))
                continue
            raise self._error(resp, attempt + 1)
        raise JudgeAPIError(f"judge service failed after {self.retries + 1} tries: {last}")  # pragma: no cover

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
