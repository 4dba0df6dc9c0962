"""Judge service under bad input and faults: N requests at C concurrent clients over real HTTP, 10 % of
them holding a bad item, with and without faults injected mid-run.

    .venv/bin/python benchmarks/serving/bench_faults.py [--requests 10000] [--clients 64] [--out FILE]

The real Serve app (serving.app) on 127.0.0.1: proxy -> ingress (auth, validation) -> judge deployment
(2 replicas). The judge is the simulated model of sim_judge.py with no cost (real refusal-phrase labels)
that raises on a marked item, like a judge on input it cannot take. Bad items, in equal parts: a lone
UTF-16 surrogate, a field over max_field_chars, a wrong type (all three rejected at the edge), and the
marked item the judge raises on (isolated in the judge deployment). Faults, one per run: none; SIGKILL of
a judge replica; clients that give up after 20 ms on 5 % of their requests (cancellation).
Goals: no good request lost, every bad one answered 4xx naming its item.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
REJECT = "[[reject]]"
GOOD = [("I'm sorry, I can't help with that.", "refused"), ("Sure, here is how to bake bread.", "complied"),
        ("抱歉，我无法提供这方面的帮助。", "refused"), ("Step 1: mix flour and water.", "complied")]
MAX_FIELD = 2000


@dataclass
class Run:
    fault: str
    counts: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    note: str = ""


def _config(replicas: int) -> dict:
    return {
        "judge": {"name": "simulated-model", "import_modules": ["benchmarks.serving.sim_judge"],
                  "options": {"call_s": 0.0, "item_s": 0.0, "reject_marker": REJECT}},
        "batching": {"enabled": True, "max_batch_size": 32, "batch_wait_timeout_s": 0.002},
        "ingress": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.5}},
        "backend": {"num_replicas": replicas, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.5}},
        "limits": {"max_items": 32, "max_field_chars": MAX_FIELD, "max_body_bytes": 256 * 1024},
        "auth": {"required": True}, "judge_timeout_s": 30,
    }


def _request(rng: random.Random, bad: bool) -> tuple[bytes, list[str] | str]:
    """(body, expected labels) for a good request, (body, "bad@<index>") for a bad one."""
    picked = [rng.choice(GOOD) for _ in range(rng.randrange(1, 4))]
    items: list[dict] = [{"prompt": "How do I bake bread?", "response": r, "language": None} for r, _ in picked]
    if not bad:
        return json.dumps({"items": items}).encode(), [label for _, label in picked]
    pos = rng.randrange(len(items) + 1)
    kind = rng.choice(["surrogate", "too-long", "wrong-type", "judge-raises"])
    item = {"surrogate": {"prompt": "p", "response": "a\ud800b"}, "too-long": {"prompt": "p", "response": "x" * (MAX_FIELD + 1)},
            "wrong-type": {"prompt": "p", "response": 7}, "judge-raises": {"prompt": "p", "response": f"Sure {REJECT}"}}[kind]
    items.insert(pos, item)
    return json.dumps({"items": items}).encode(), f"{kind}@{pos}"


async def _load(url: str, token: str, n: int, clients: int, seed: int, abandon: float, run: Run,
                on_half: object = None) -> None:
    import aiohttp

    rng = random.Random(seed)
    plan = [_request(rng, i % 10 == 0) for i in range(n)]  # 10 % bad
    rng.shuffle(plan)
    queue: asyncio.Queue[tuple[bytes, list[str] | str]] = asyncio.Queue()
    for p in plan:
        queue.put_nowait(p)
    done = [0]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession, crng: random.Random) -> None:
        while not queue.empty():
            body, expect = queue.get_nowait()
            give_up = crng.random() < abandon
            start = time.perf_counter()
            try:
                timeout = aiohttp.ClientTimeout(total=0.02 if give_up else 60)
                async with session.post(f"{url}/v1/judge", data=body, headers=headers, timeout=timeout) as resp:
                    status, payload = resp.status, await resp.json(content_type=None)
            except TimeoutError:
                run.counts["abandoned by the client" if give_up else "good: timeout"] += 1
                continue
            except aiohttp.ClientError as exc:
                run.counts[f"{'bad' if isinstance(expect, str) else 'good'}: {type(exc).__name__}"] += 1
                continue
            finally:
                done[0] += 1
                if on_half is not None and done[0] == n // 2:
                    on_half()  # type: ignore[operator]
            if isinstance(expect, list):
                ok = status == 200 and [r["label"] for r in payload["results"]] == expect
                run.counts["good: ok" if ok else f"good: HTTP {status}"] += 1
                if ok and not give_up:
                    run.latencies.append(time.perf_counter() - start)
            else:
                named = 400 <= status < 500 and f"items.{expect.split('@')[1]}" in str(payload.get("detail"))
                run.counts["bad: 4xx naming the item" if named else f"bad: HTTP {status}"] += 1

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(client(session, random.Random(seed + i)) for i in range(clients)))


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000 if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--faults", default="none,kill-judge-replica,client-cancels")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import secrets

    import ray
    from ray import serve

    token = secrets.token_hex(24)
    os.environ["SAFEDRIFT_JUDGE_TOKEN"] = token  # before ray.init: the replicas inherit it
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # the sim judge
    from serving.app import serve_judge

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs: list[Run] = []
    load_before = os.getloadavg()
    try:
        for fault in args.faults.split(","):
            service = serve_judge(_config(2), host="127.0.0.1", port=port, app_name="bench-faults")
            run = Run(fault)
            on_half = None
            if fault == "kill-judge-replica":
                handle = service.backend_handle()
                pids = {handle.info.remote().result()["replica"]["pid"] for _ in range(20)}
                victim = sorted(pids)[0]

                def on_half(victim: int = victim) -> None:
                    os.kill(victim, signal.SIGKILL)
                run.note = f"SIGKILL of judge replica pid {victim} after half the requests ({len(pids)} replicas)"
            elif fault == "client-cancels":
                run.note = "5 % of requests abandoned by their client after 20 ms"
            start = time.perf_counter()
            asyncio.run(_load(service.url, token, args.requests, args.clients, 1234, 0.05 if fault == "client-cancels" else 0.0,
                              run, on_half))
            run.wall_s = time.perf_counter() - start
            stats = service.backend_handle().info.remote().result()["stats"]
            run.note += f"; judge stats of one replica after the run: {stats}"
            runs.append(run)
            print(fault, dict(run.counts), f"{run.wall_s:.1f}s", flush=True)
            service.shutdown()
    finally:
        serve.shutdown()
        ray.shutdown()
    text = _report(runs, args, load_before, os.getloadavg())
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


def _report(runs: list[Run], args: argparse.Namespace, before: tuple, after: tuple) -> str:
    lines = [
        f"Command: `.venv/bin/python benchmarks/serving/bench_faults.py {' '.join(sys.argv[1:])}`".replace(" `", "`", 0),
        "",
        f"{args.requests} requests per run at {args.clients} concurrent clients, 10 % with a bad item; load average "
        f"before/after {before[0]:.1f} / {after[0]:.1f}.",
        "",
        "| fault | good ok | good failed | bad answered 4xx naming the item | bad otherwise | abandoned by client | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        c = r.counts
        good_failed = sum(n for k, n in c.items() if k.startswith("good:") and k != "good: ok")
        bad_other = sum(n for k, n in c.items() if k.startswith("bad:") and k != "bad: 4xx naming the item")
        total = sum(c.values())
        lines.append(f"| {r.fault} | {c['good: ok']} | {good_failed} | {c['bad: 4xx naming the item']} | {bad_other} | "
                     f"{c['abandoned by the client']} | {total / r.wall_s:.0f} | {_pct(r.latencies, 50):.0f} | "
                     f"{_pct(r.latencies, 99):.0f} |")
    lines += [""] + [f"- {r.fault}: {r.note}; outcomes {dict(r.counts)}" for r in runs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
