"""The judge deployment: one judge from the registry per replica, called in dynamic batches.

Concurrent requests that reach a replica are merged by ``@serve.batch`` into one ``Judge.judge`` call,
which is what makes a model judge efficient (one forward pass for many items). Calls to the judge run
on a single worker thread: a model on one accelerator runs one batch at a time, and the event loop
stays free to collect the next batch meanwhile.

One catch, measured on Ray 2.60: ``serve.batch`` closes a batch ``batch_wait_timeout_s`` after its
first request whether or not the previous batch is still running (the ``max_concurrent_batches``
semaphore is taken only after a batch is formed, and held for the whole handler). Behind a 200 ms
model call, 16 requests that all arrived within 50 ms were judged in calls of 1, 2, 2, 3 and 9 items.
``_Coalescer`` fixes that: batches that form while the judge is busy are merged into the next judge
call (up to ``max_batch_size`` requests), so the batch size grows with the load.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from pipelines.registries.judges import JudgeItem, make_judge
from serving.config import JudgeServiceConfig

logger = logging.getLogger("ray.serve")


class JudgeContractError(RuntimeError):
    """A judge returned a different number of verdicts than items."""


Results = list[dict[str, Any]]


class _Coalescer:
    """Runs ``fn`` on one thread, one call at a time, merging the groups of items that arrive while a
    call runs into the next call. A group (one serve.batch batch, or one request) is never split."""

    def __init__(self, fn: Callable[[list[dict[str, Any]]], Results], max_requests: int) -> None:
        self._fn = fn
        self._max = max_requests  # no more groups once a call holds this many requests (1 group always)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")
        self._pending: list[tuple[list[list[dict[str, Any]]], asyncio.Future[list[Results]]]] = []
        self._running = False

    async def submit(self, group: list[list[dict[str, Any]]]) -> list[Results]:
        """``group``: the item lists of several requests; returns their results, request by request."""
        future: asyncio.Future[list[Results]] = asyncio.get_running_loop().create_future()
        self._pending.append((group, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                take, n_requests = 0, 0
                while take < len(self._pending) and (take == 0 or n_requests + len(self._pending[take][0]) <= self._max):
                    n_requests += len(self._pending[take][0])
                    take += 1
                batch, self._pending = self._pending[:take], self._pending[take:]
                requests = [req for group, _ in batch for req in group]
                flat = [item for req in requests for item in req]
                try:
                    results = await loop.run_in_executor(self._executor, self._fn, flat)
                except Exception as exc:  # every caller in this call gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for group, future in batch:
                    per_request = []
                    for req in group:
                        per_request.append(results[start : start + len(req)])
                        start += len(req)
                    if not future.done():
                        future.set_result(per_request)
        finally:
            self._running = False


@serve.deployment(name="JudgeBackend")
class JudgeBackend:
    def __init__(self, config: dict[str, Any]) -> None:
        cfg = JudgeServiceConfig.model_validate(config)
        for module in cfg.judge.import_modules:
            importlib.import_module(module)  # registers plugin judges before the lookup below
        self._judge = make_judge(cfg.judge.name, **cfg.judge.options)
        self._batching = cfg.batching.enabled
        # Unbatched: one request per judge call (max 1), still one call at a time, as on one device.
        self._runner = _Coalescer(self._run_sync, cfg.batching.max_batch_size if self._batching else 1)
        # serve.batch's parameters are decorator arguments; the setters apply the configured ones.
        self._judge_batched.set_max_batch_size(cfg.batching.max_batch_size)
        self._judge_batched.set_batch_wait_timeout_s(cfg.batching.batch_wait_timeout_s)
        self._info = {
            "judge": self._judge.name,
            "judge_version": self._judge.version,
            "batching": cfg.batching.model_dump(),
        }
        # Counters (no content): how well batching merges requests, reported by info().
        self._stats = {"requests": 0, "judge_calls": 0, "items": 0}
        logger.info("judge backend ready: judge=%s version=%s batching=%s", self._judge.name,
                    self._judge.version, self._batching)

    def info(self) -> dict[str, Any]:
        return {**self._info, "stats": dict(self._stats)}

    async def judge(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items as dicts (prompt, response, language) -> results (label, score, judge, judge_version)."""
        if not items:
            return []
        self._stats["requests"] += 1
        if self._batching:
            return await self._judge_batched(items)
        return (await self._runner.submit([items]))[0]

    # max_concurrent_batches high on purpose: serve.batch holds its semaphore for the whole handler, so
    # with 1, batches formed during a judge call wait on the semaphore one by one. Let them all reach
    # the _Coalescer instead, which runs one judge call at a time and merges whatever is waiting. (Serve
    # then warns that max_ongoing_requests < max_batch_size * max_concurrent_batches: expected here.)
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=16)
    async def _judge_batched(self, requests: list[list[dict[str, Any]]]) -> list[Results]:
        # One judge call for all items of all requests in the batch (and of the batches that queued
        # behind a running call), then split back per request.
        return await self._runner.submit(requests)

    def _run_sync(self, items: Sequence[dict[str, Any]]) -> Results:
        """On the judge thread: one ``Judge.judge`` call."""
        judge_items = [JudgeItem(i["prompt"], i["response"], i.get("language")) for i in items]
        verdicts = self._judge.judge(judge_items)
        self._stats["judge_calls"] += 1  # single writer: the judge thread
        self._stats["items"] += len(judge_items)
        if len(verdicts) != len(judge_items):
            raise JudgeContractError(
                f"judge {self._judge.name} returned {len(verdicts)} verdicts for {len(judge_items)} items"
            )
        name, version = self._judge.name, self._judge.version
        return [
            {"label": v.label_name, "score": float(v.score), "judge": name, "judge_version": version}
            for v in verdicts
        ]
