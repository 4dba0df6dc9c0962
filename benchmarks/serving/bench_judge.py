"""Judge service benchmark: throughput and p50/p99 latency at 1, 8 and 64 concurrent clients, with
dynamic batching on and off, for the refusal-phrase judge and a simulated model judge, in one run.

    .venv/bin/python -m benchmarks.serving.bench_judge [--seconds 6] [--out benchmarks/serving/RESULTS.md]

Each client is a closed loop (next request when the last one is answered) over real HTTP on 127.0.0.1,
through the whole stack: Serve proxy -> ingress (auth, validation) -> batched judge deployment.
One replica of each deployment, so the comparison isolates batching.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CONCURRENCY = (1, 8, 64)


def judges(call_ms: float, item_ms: float) -> dict[str, dict]:
    return {
        "refusal-phrase": {"name": "refusal-phrase"},
        "simulated-model": {
            "name": "simulated-model",
            "options": {"call_s": call_ms / 1000, "item_s": item_ms / 1000},
            "import_modules": ["benchmarks.serving.sim_judge"],
        },
    }

ITEM = {"prompt": "How do I bake sourdough bread?", "response": "Sure, here is how: mix flour and water."}


@dataclass
class Row:
    judge: str
    batching: bool
    clients: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    items_per_call: float  # mean judge batch size seen by the judge deployment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(judge: dict, batching: bool) -> dict:
    return {
        "judge": judge,
        "batching": {"enabled": batching, "max_batch_size": 64, "batch_wait_timeout_s": 0.005},
        "ingress": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.5}},
        "backend": {"num_replicas": 1, "max_ongoing_requests": 128, "ray_actor_options": {"num_cpus": 0.5}},
        "auth": {"required": True},
    }


async def _load(url: str, token: str, clients: int, seconds: float, warmup: float, items: int) -> tuple[list[float], int]:
    import aiohttp

    body = {"items": [ITEM] * items}
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            try:
                async with session.post(f"{url}/v1/judge", json=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            done = time.perf_counter()
            # Count by completion time: with latencies of seconds (64 clients, unbatched), counting only
            # requests that also started inside the window would undercount throughput.
            if measure_from <= done <= stop_at:
                if ok:
                    latencies.append(done - now)
                else:
                    errors += 1

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return latencies, errors


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def run(seconds: float, warmup: float, items: int, judge_specs: dict[str, dict]) -> list[Row]:
    import ray
    from ray import serve

    from serving.app import build_app

    token = secrets.token_hex(16)
    os.environ["SAFEDRIFT_JUDGE_TOKEN"] = token  # before ray.init: the replicas inherit it
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    rows: list[Row] = []
    try:
        for judge_name, judge in judge_specs.items():
            for batching in (True, False):
                serve.run(build_app(_config(judge, batching)), name="bench", route_prefix="/")
                backend = serve.get_deployment_handle("JudgeBackend", app_name="bench")
                for clients in CONCURRENCY:
                    before = backend.info.remote().result()["stats"]
                    lat, errors = asyncio.run(_load(url, token, clients, seconds, warmup, items))
                    after = backend.info.remote().result()["stats"]
                    calls = after["judge_calls"] - before["judge_calls"]
                    row = Row(judge_name, batching, clients, len(lat), errors, len(lat) / seconds,
                              _pct(lat, 50) * 1000, _pct(lat, 99) * 1000,
                              (after["items"] - before["items"]) / calls if calls else 0.0)
                    rows.append(row)
                    print(f"{row.judge:16} batching={'on ' if batching else 'off'} clients={clients:3} "
                          f"rps={row.rps:8.1f} p50={row.p50_ms:8.1f}ms p99={row.p99_ms:8.1f}ms "
                          f"items/call={row.items_per_call:5.1f} errors={errors}", flush=True)
                serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def report(rows: list[Row], args: argparse.Namespace, load_before: tuple, load_after: tuple) -> str:
    import ray

    lines = [
        "# Judge service benchmark",
        "",
        f"Command: `{' '.join(['.venv/bin/python -m benchmarks.serving.bench_judge'] + sys.argv[1:])}`",
        "",
        f"Machine: {_machine()}; Ray {ray.__version__}; no GPU. Load average before/after the run: "
        f"{load_before[0]:.1f} / {load_after[0]:.1f} (other workloads shared the machine).",
        "",
        f"Closed-loop clients over HTTP on 127.0.0.1, {args.items} item(s) per request, {args.seconds:g} s measured "
        f"after {args.warmup:g} s warm-up per cell; 1 ingress + 1 judge replica; batching: max_batch_size 64, "
        f"batch_wait_timeout_s 0.005. `simulated-model` sleeps {args.sim_call_ms:g} ms per call + "
        f"{args.sim_item_ms:g} ms per item (a model forward pass off the CPU, one at a time per replica) and "
        "labels like `refusal-phrase`.",
        "",
        "| judge | batching | clients | requests | errors | req/s | p50 ms | p99 ms | p99/p50 | items/judge call |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.judge} | {'on' if r.batching else 'off'} | {r.clients} | {r.requests} | {r.errors} | "
                     f"{r.rps:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.p99_ms / r.p50_ms:.2f} | {r.items_per_call:.1f} |")
    lines += ["", "## Goals (64 clients): batched >= 8x unbatched throughput, p99 <= 3x p50", ""]
    for judge in dict.fromkeys(r.judge for r in rows):
        on = next(r for r in rows if r.judge == judge and r.batching and r.clients == 64)
        off = next(r for r in rows if r.judge == judge and not r.batching and r.clients == 64)
        speedup = on.rps / off.rps if off.rps else float("inf")
        ratio = on.p99_ms / on.p50_ms
        lines.append(f"- {judge}: batched/unbatched = {speedup:.1f}x ({'met' if speedup >= 8 else 'NOT met'}); "
                     f"batched p99/p50 = {ratio:.2f} ({'met' if ratio <= 3 else 'NOT met'})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--items", type=int, default=1, help="items per request")
    parser.add_argument("--sim-call-ms", type=float, default=50.0, help="simulated model: cost per call")
    parser.add_argument("--sim-item-ms", type=float, default=0.5, help="simulated model: cost per item")
    parser.add_argument("--judges", default="refusal-phrase,simulated-model", help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    specs = judges(args.sim_call_ms, args.sim_item_ms)
    specs = {name: specs[name] for name in args.judges.split(",")}
    rows = run(args.seconds, args.warmup, args.items, specs)
    text = report(rows, args, load_before, os.getloadavg())
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
