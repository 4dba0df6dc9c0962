"""The judge deployment: one judge from the registry per replica, called in dynamic batches.

Concurrent requests that reach a replica are merged into one ``Judge.judge`` call, which is what makes
a model judge efficient (one forward pass for many items). Calls run on a single worker thread, one at
a time (a model on one accelerator runs one batch at a time), and the event loop stays free to queue the
next requests meanwhile.

``JudgeQueue`` does the batching itself rather than ``@serve.batch``, for four reasons measured or read
in Ray 2.60's ``serve/batching.py``:
- ``serve.batch`` closes a batch ``batch_wait_timeout_s`` after its first request whether or not the
  previous call still runs: behind a 200 ms model call, 16 requests that arrived within 50 ms were judged
  in calls of 1, 2, 2, 3 and 9 items. Here everything that queued during a call goes into the next one
  (up to ``max_batch_size`` requests), so the batch size grows with the load;
- a merged call that raises fails every request in it (546 of 560 good requests failed at 64 clients
  with one bad request in eight). Here a failed call is split in halves and retried until the failing
  request is alone, and inside that request the failing item is found by bisection: the good requests
  are answered, the bad one gets ``JudgeItemError`` naming the item. Cost: at most about
  2·log2(n) extra calls per bad request, none when nothing fails;
- ``serve.batch`` drops a cancelled request only while forming a batch; here cancelled requests and
  requests past their deadline are dropped right before every judge call (and every retry), unjudged;
- one queue holds each request's own future and deadline, so no per-batch envelope is needed.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, get_args

from ray import serve

from pipelines.evaluate.judges import JudgeItem, make_judge
from pipelines.evaluate.judges.policy import Judging, UnjudgeableLanguageError
from pipelines.evaluate.judges.validity import languages_info
from serving.config import JudgeServiceConfig
from serving.errors import DeadlineExceeded, JudgeContractError, JudgeItemError, JudgeUnavailable
from serving.schemas import Label, unicode_problem

logger = logging.getLogger("ray.serve")

Results = list[dict[str, Any]]
STAT_KEYS = ("requests", "judge_calls", "items", "cancelled", "expired", "splits", "item_errors", "info_calls",
             "judge_failures", "max_call_items")
# Items in one merged judge call at most (a single larger request still goes alone). Uncapped, 64 requests
# of 64 items made a 4,096-item call that also back-translates: about 110 s at the plan's throughputs,
# which every request queued behind it waits on top of its own call. 512 keeps a call near 14 s there and
# is still far past the batch a 7B judge needs to fill a GPU.
MAX_CALL_ITEMS = 512
# What the judge must answer while it works: an item is blamed for a failure only when the judge judges
# this one meanwhile (an always-failing judge gave every request 422 for its last item, issue 30).
CANARY = [{"prompt": "What is the capital of France?", "response": "Paris.", "language": "en"}]
_DOWN_CACHE_S = 1.0  # a failed canary is believed this long: a down judge is not probed per request


@dataclass
class _Pending:
    items: list[dict[str, Any]]
    deadline: float  # wall clock (time.time()): it is set by the ingress, in another process
    future: asyncio.Future[Results]


def _reason(exc: BaseException) -> str:
    # The exception's type only: a judge's message may quote the item, and this text can reach logs.
    return f"the judge raised {type(exc).__name__} on this item"


class JudgeQueue:
    """Runs ``fn`` on one thread, one call at a time; requests queued during a call are merged into the
    next one (at most ``max_requests`` and ``max_items``). Failures are isolated per request and per item
    (module doc)."""

    def __init__(self, fn: Callable[[list[dict[str, Any]]], Results], max_requests: int, wait_s: float = 0.0,
                 stats: dict[str, int] | None = None, clock: Callable[[], float] = time.time,
                 canary: list[dict[str, Any]] | None = None, max_items: int = MAX_CALL_ITEMS) -> None:
        self._fn, self._max, self._wait_s, self._clock = fn, max_requests, wait_s, clock
        self._max_items = max_items
        self._canary, self._down_until = canary, 0.0
        self.stats = stats if stats is not None else dict.fromkeys(STAT_KEYS, 0)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")
        self._pending: list[_Pending] = []
        self._running = False

    async def submit(self, items: list[dict[str, Any]], deadline: float) -> Results:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Results] = loop.create_future()
        self._pending.append(_Pending(items, deadline, future))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future  # a cancelled caller cancels this future: _live() then drops the request

    async def _drain(self) -> None:
        try:
            if self._wait_s > 0 and len(self._pending) < self._max:
                await asyncio.sleep(self._wait_s)  # idle until now: give concurrent requests a moment to join
            while self._pending:
                batch = self._take()
                try:
                    await self._judge_requests(batch)
                except Exception as exc:  # a bug here must not leave callers waiting forever
                    for req in batch:
                        if not req.future.done():
                            req.future.set_exception(exc)
        finally:
            self._running = False

    def _take(self) -> list[_Pending]:
        """The next call's requests, in queue order: at most max_requests and max_items items (a request
        larger than max_items alone)."""
        n = items = 0
        for req in self._pending[: self._max]:
            if n and items + len(req.items) > self._max_items:
                break
            n, items = n + 1, items + len(req.items)
        batch, self._pending = self._pending[:n], self._pending[n:]
        return batch

    def run_beside(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn`` on the judge's one thread, between calls: other work that uses the judge's model (the
        validity measurement) must never run beside a call (one vLLM engine serves one thread)."""
        return self._executor.submit(fn, *args)

    def _alive(self, req: _Pending) -> bool:
        """False (and the request settled) when it was cancelled or its deadline passed."""
        if req.future.done():
            if req.future.cancelled():
                self.stats["cancelled"] += 1
            return False
        late = self._clock() - req.deadline
        if late > 0:
            self.stats["expired"] += 1
            req.future.set_exception(DeadlineExceeded(late))
            return False
        return True

    async def _call(self, items: list[dict[str, Any]]) -> Results:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._fn, items)

    async def _judge_requests(self, reqs: list[_Pending]) -> None:
        reqs = [r for r in reqs if self._alive(r)]
        if not reqs:
            return
        items = [item for r in reqs for item in r.items]
        self.stats["max_call_items"] = max(self.stats.get("max_call_items", 0), len(items))
        try:
            results = await self._call(items)
        except Exception as exc:
            if len(reqs) == 1:
                await self._judge_alone(reqs[0], exc)
                return
            self.stats["splits"] += 1  # one of them holds what the judge raised on: halve and retry
            mid = len(reqs) // 2
            await self._judge_requests(reqs[:mid])
            await self._judge_requests(reqs[mid:])
            return
        start = 0
        for req in reqs:
            if not req.future.done():
                req.future.set_result(results[start : start + len(req.items)])
            start += len(req.items)

    async def _judge_works(self) -> bool:
        """Whether the judge answers the canary now (True without a canary: every failure is the item's)."""
        if self._canary is None:
            return True
        if time.monotonic() < self._down_until:
            return False
        try:
            await self._call(self._canary)
            return True
        except Exception:
            self._down_until = time.monotonic() + _DOWN_CACHE_S
            return False

    async def _judge_alone(self, req: _Pending, exc: Exception) -> None:
        try:
            if not isinstance(exc, JudgeContractError) and not await self._judge_works():
                self.stats["judge_failures"] += 1
                logger.error("judge failing on a known-good item too: judge unavailable type=%s items=%d",
                             type(exc).__name__, len(req.items))
                raise JudgeUnavailable(type(exc).__name__)
            results = await self._bisect(req, req.items, 0, exc)
        except Exception as err:
            if isinstance(err, JudgeItemError):
                self.stats["item_errors"] += 1
            if not req.future.done():
                req.future.set_exception(err)
            return
        if results is not None and not req.future.done():
            req.future.set_result(results)

    async def _bisect(self, req: _Pending, items: list[dict[str, Any]], offset: int,
                      exc: Exception) -> Results | None:
        """Results for ``items`` (which failed together with ``exc``), or the first failing item's error."""
        if isinstance(exc, JudgeContractError):
            raise exc  # the judge's bug, not the input's: a 500, not an item to blame
        if len(items) == 1:
            raise JudgeItemError(offset, _reason(exc)) from None
        if not self._alive(req):
            return None
        mid = len(items) // 2
        parts: Results = []
        for part, at in ((items[:mid], offset), (items[mid:], offset + mid)):
            try:
                got = await self._call(part)
            except Exception as part_exc:
                got = await self._bisect(req, part, at, part_exc)
                if got is None:
                    return None
            parts += got
        return parts  # each half alone was fine: the judge failed only on the whole (e.g. its size)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (unit tests)
        return "-"


@serve.deployment(name="JudgeBackend")
class JudgeBackend:
    def __init__(self, config: dict[str, Any]) -> None:
        cfg = JudgeServiceConfig.model_validate(config)
        for module in cfg.judge.import_modules:
            importlib.import_module(module)  # registers plugin judges before the lookup below
        self._judge = make_judge(cfg.judge.name, **cfg.judge.options)
        # The one language policy the pipeline uses too: a request item's `language` decides whether its
        # answer is read as written, back-translated first, or refused with 422 (UnjudgeableLanguageError).
        self._judging = Judging(self._judge, cfg.judge.back_translate, cfg.judge.translate_prefer)
        self._languages: list[dict[str, Any]] = self._judging.languages_info()
        self._validity_state = "computing" if cfg.judge.validity else "off"
        self._timeout_s = cfg.judge_timeout_s
        batching = cfg.batching
        # Unbatched: one request per judge call (max 1), still one call at a time, as on one device.
        self._stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)  # counters, no content: reported by info()
        self._queue = JudgeQueue(self._run_sync, batching.max_batch_size if batching.enabled else 1,
                                 batching.batch_wait_timeout_s if batching.enabled else 0.0, self._stats,
                                 canary=CANARY)
        if cfg.judge.validity:
            # On the judge's own thread, not a second one: the measurement judges with the same model,
            # and a vLLM engine driven from two threads mixes up their outputs.
            self._queue.run_beside(self._measure_validity, cfg.judge.options)
        # Optional judge hook: check_item(JudgeItem) -> reason or None, for limits the judge knows best
        # (e.g. a model's context length). Checked per item before any batching.
        self._check_item = getattr(self._judge, "check_item", None)
        # What a result's label can be (schemas.Label) and what this judge cannot tell apart, so a client
        # reads a non_answer rate as it is meant: an answer that neither refused nor attempted the request.
        self._info = {"judge": self._judge.name, "judge_version": self._judge.version,
                      "batching": batching.model_dump(), "labels": list(get_args(Label)),
                      "cannot_tell": self._judge.cannot_tell}
        logger.info("judge backend ready: judge=%s version=%s batching=%s", self._judge.name,
                    self._judge.version, batching.enabled)

    def _measure_validity(self, options: dict[str, Any]) -> None:
        """kappa per language on held-out human labels (as each language is judged here); minutes cold,
        seconds from the cache. Until it is done, /v1/info lists the languages without their kappa."""
        try:
            self._languages = languages_info(self._judge, options, [r["language"] for r in self._languages],
                                             self._judging.back_translate, self._judging.prefer)
            self._validity_state = "measured"
        except Exception as exc:  # never takes the replica down: the languages stay listed, unvalidated
            logger.warning("judge validity could not be measured (%s): languages listed unvalidated",
                           type(exc).__name__)
            self._validity_state = "failed"

    def info(self) -> dict[str, Any]:
        self._stats["info_calls"] += 1
        # Which replica answered (its stats are its own): for operators and the replica-kill test.
        return {**self._info, "languages": list(self._languages), "validity": self._validity_state,
                "stats": dict(self._stats), "replica": {"pid": os.getpid(), "id": _replica_id()}}

    async def judge(self, items: list[dict[str, Any]], deadline: float | None = None) -> Results:
        """Items as dicts (prompt, response, language) -> results (label, score, judge, judge_version).

        ``deadline``: wall-clock time (``time.time()``) after which the request is dropped unjudged
        (``DeadlineExceeded``); default ``judge_timeout_s`` from now. Raises ``JudgeItemError`` for an item
        that cannot be judged; the other requests batched with it are unaffected.
        """
        return await self._judge_items(items, deadline)

    async def judge_outcome(self, items: list[dict[str, Any]], deadline: float | None = None) -> dict[str, Any]:
        """``judge`` for the ingress: the expected failures come back as values, not raised, because Serve
        logs every exception a replica raises with its traceback (at 10 % bad items, most of the log)."""
        try:
            return {"results": await self._judge_items(items, deadline)}
        except JudgeItemError as exc:
            return {"item_error": {"index": exc.index, "reason": exc.reason}}
        except DeadlineExceeded as exc:
            return {"deadline_exceeded": exc.late_by_s}
        except JudgeUnavailable as exc:
            return {"judge_unavailable": exc.cause}

    async def _judge_items(self, items: list[dict[str, Any]], deadline: float | None) -> Results:
        if not items:
            return []
        self._stats["requests"] += 1
        for idx, item in enumerate(items):
            problem = self._problem(item)
            if problem:
                self._stats["item_errors"] += 1
                raise JudgeItemError(idx, problem)
        return await self._queue.submit(items, deadline if deadline is not None else time.time() + self._timeout_s)

    def _problem(self, item: dict[str, Any]) -> str | None:
        # The ingress checks Unicode at the edge; handle callers (RemoteJudge in the cluster) skip it.
        for field in ("prompt", "response"):
            problem = unicode_problem(item.get(field))
            if problem:
                return f"{field}: {problem}"
        try:
            self._judging.policy(item.get("language"))
        except UnjudgeableLanguageError as exc:
            return f"language '{exc.language}' cannot be judged here; this judge judges: {', '.join(exc.judgeable)}"
        if self._check_item is not None:
            return self._check_item(JudgeItem(item["prompt"], item["response"], item.get("language")))
        return None

    def _run_sync(self, items: Sequence[dict[str, Any]]) -> Results:
        """On the judge thread: one ``Judge.judge`` call."""
        judge_items = [JudgeItem(i["prompt"], i["response"], i.get("language")) for i in items]
        verdicts = [j.verdict for j in self._judging.judge_items(judge_items)]
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
