"""Issue #29, point 2: the study's judge calls through the Serve handle must survive a slow merged call.
A replica judges one merged call at a time, so a chunk waits for the whole queue ahead of it; the paper's
calls (64 requests × 64 items, back-translated) took about 110 s against a 60 s client timeout. Here the
same shape, scaled down: a fake judge that costs 4 ms an item behind a real Serve deployment, a client
`timeout` of 1 s and a service default deadline of 1 s; three evaluation workers' worth of items at once.
Also: merged calls are capped by items (a queue of many requests never becomes one giant call), and a call
that runs past judge.options.wait_s fails naming that setting."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pipelines.errors import ConfigError
from pipelines.evaluate.judges import JudgeItem, make_judge
from serving.backend import MAX_CALL_ITEMS, JudgeQueue
from serving.client import JudgeAPIError

APP = "slow-judge"
ITEM_S = 0.004  # a 512-item call: about 2 s, twice the client's timeout
SIM_JUDGE = "benchmarks.serving.sim_judge"
TEXTS = ["Sure, mix flour and water, then bake it.", "I'm sorry, I can't help with that.",
         "Lo siento, no puedo ayudar con eso.", "当然可以。首先准备面粉和水。"]


def items(worker: int, n: int) -> list[JudgeItem]:
    return [JudgeItem(f"Question {worker}-{i}?", TEXTS[(worker + i) % len(TEXTS)], "en") for i in range(n)]


def app_config() -> dict:
    return {"applications": [{"name": APP, "route_prefix": "/slow", "args": {
        "judge": {"name": "simulated-model", "import_modules": [SIM_JUDGE], "validity": False,
                  "options": {"call_s": 0.0, "item_s": ITEM_S}},
        "batching": {"enabled": True, "max_batch_size": 64, "batch_wait_timeout_s": 0.005},
        "ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        "backend": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.1}},
        "limits": {"max_items": 64}, "judge_timeout_s": 1, "auth": {"required": False},
    }}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def slow_app(ray_cluster) -> Iterator[None]:
    from ray import serve

    from serving.app import serve_judge

    with pytest.MonkeyPatch.context() as mp:
        for name in ("SAFEDRIFT_JUDGE_TOKEN", "SAFEDRIFT_JUDGE_TOKEN_FILE", "SAFEDRIFT_JUDGE_TOKENS_DIR"):
            mp.delenv(name, raising=False)
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        serve_judge(app_config(), host="127.0.0.1", port=free_port())
        try:
            yield
        finally:
            serve.shutdown()  # this module started Serve: no proxy left for later tests


def test_study_calls_survive_merged_calls_longer_than_the_client_timeout(slow_app: None) -> None:
    from ray import serve

    per_worker = 640
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            got[w] = make_judge("remote", app_name=APP, timeout=1.0).judge(items(w, per_worker))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    assert not errors, f"{type(errors[0]).__name__}: {errors[0]}"
    reference = make_judge("refusal-phrase")
    for w, verdicts in got.items():
        assert [v.label for v in verdicts] == [v.label for v in reference.judge(items(w, per_worker))], w
    stats = serve.get_deployment_handle("JudgeBackend", app_name=APP).info.remote().result(timeout_s=10)["stats"]
    # Capped by items: 1,920 items in calls of at most 512 (8 requests of 64), though 30 requests queued.
    assert stats["items"] == 3 * per_worker and stats["expired"] == 0
    assert 1 < stats["max_call_items"] <= MAX_CALL_ITEMS and stats["judge_calls"] >= 4
    # A merged call outlasted the client's timeout (and the service's default deadline) and nothing failed.
    assert stats["max_call_items"] * ITEM_S > 1.0 and wall > 3.0


def test_a_call_past_wait_s_fails_naming_the_setting(slow_app: None) -> None:
    judge = make_judge("remote", app_name=APP, wait_s=0.5)
    with pytest.raises(JudgeAPIError, match=r"judge\.options\.wait_s=0\.5 s: raise judge\.options\.wait_s"):
        judge.judge(items(9, 640))  # 2.6 s of judging


def test_merged_calls_are_capped_by_items() -> None:
    calls: list[int] = []

    def judge(batch: list[dict]) -> list[dict]:
        calls.append(len(batch))
        time.sleep(0.02)
        return [{"label": "refused"} for _ in batch]

    async def run() -> list[list[dict]]:
        queue = JudgeQueue(judge, max_requests=64, max_items=256)
        sizes = [100] * 10 + [600]  # the last request alone exceeds the cap: it goes by itself
        return await asyncio.gather(*(queue.submit([{}] * n, time.time() + 60) for n in sizes))

    results = asyncio.run(run())
    assert [len(r) for r in results] == [100] * 10 + [600]
    assert max(calls[:-1]) <= 256 and calls[-1] == 600 and sum(calls) == 1600


def test_a_running_application_with_another_judge_is_not_used(slow_app: None) -> None:
    """Issue #29, point 9: an application of that name (a RayService's) judging with another judge than
    the study's deploy config names must not label the study."""
    judge = make_judge("remote", app_name=APP, deploy="serving/judge-paper.yaml")
    with pytest.raises(ConfigError, match=r"judges with 'simulated-model', but judge\.options\.deploy"):
        judge.prepare()


def test_work_beside_the_judge_runs_on_its_one_thread_between_calls() -> None:
    """Issue #29, point 3: the replica's validity measurement judges with the same model; it runs on the
    judge's own thread (JudgeQueue.run_beside), never at the same time as a call."""
    seen: list[tuple[str, str, float, float]] = []

    def record(what: str) -> None:
        t0 = time.monotonic()
        time.sleep(0.05)
        seen.append((what, threading.current_thread().name, t0, time.monotonic()))

    def judge(batch: list[dict]) -> list[dict]:
        record("call")
        return [{"label": "refused"} for _ in batch]

    async def run() -> None:
        queue = JudgeQueue(judge, max_requests=4)
        beside = queue.run_beside(record, "validity")
        await asyncio.gather(*(queue.submit([{}], time.time() + 60) for _ in range(6)))
        beside.result(timeout=10)

    asyncio.run(run())
    assert {name for _, name, _, _ in seen} == {seen[0][1]} and seen[0][1].startswith("judge")
    spans = sorted((t0, t1) for _, _, t0, t1 in seen)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # never two at once
