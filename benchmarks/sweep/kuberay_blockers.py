"""Issue 29's CPU measurements, in one run (about a minute on 2 cores): writes kuberay_blockers.json.

1. empty_gpu_group: a real Ray autoscaler (fake multi-node provider) with a GPU group at 0 nodes, joined by
   address as the RayJob's driver joins (tests/sweep/empty_gpu_group_driver.py): what the sweep's checks
   decide, the translation actors' GPUs, and how long a GPU task waited for the autoscaler's node.
2. slow_judge: a fake judge costing ITEM_S an item behind a real Serve deployment, judged through the
   study's RemoteJudge from WORKERS threads at once with a 1 s client timeout (the paper's 60 s, scaled):
   wall time, merged calls and their largest size, each worker's time.
3. plan: `safedrift plan -c paper`'s GPU-hours, busy and held, with each figure's source.

    .venv/bin/python benchmarks/sweep/kuberay_blockers.py"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests" / "sweep"), str(REPO / "tests"), str(REPO)]
OUT = Path(__file__).with_name("kuberay_blockers.json")
ITEM_S, WORKERS, ITEMS = 0.004, 3, 640


def empty_gpu_group() -> dict[str, Any]:
    from sweep_support import run_driver, tail

    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp) / "out.json", Path(tmp) / "driver.log"
        t0 = time.monotonic()
        rc = run_driver(REPO / "tests" / "sweep" / "empty_gpu_group_driver.py", [str(out)], log, timeout=300)
        if rc:
            raise SystemExit(tail(log))
        got = json.loads(out.read_text())
    joined = got["joined"]
    return {"driver_wall_s": round(time.monotonic() - t0, 1), "cluster_config": got["cluster_config"],
            "joined": {"concurrency_for_6_pending": joined["concurrency"], "warnings": len(joined["warnings"]),
                       "translate": joined["translate"]},
            "started_here": {"error": got["started_here"]["error"][:120] + "…", "translate": got["started_here"]["translate"]},
            "gpu_task_waited_for_autoscaler_s": got["gpu_task"]["waited_s"]}


def slow_judge() -> dict[str, Any]:
    import ray
    from ray import serve
    from test_slow_judge import APP, app_config

    from pipelines.evaluate.judges import JudgeItem, make_judge
    from serving.app import serve_judge
    from serving.backend import MAX_CALL_ITEMS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=4, include_dashboard=False)
    try:
        serve_judge(app_config(), host="127.0.0.1", port=port)
        times: dict[int, float] = {}

        def worker(w: int) -> None:
            items = [JudgeItem(f"Q{w}-{i}?", "I'm sorry, I can't help with that.", "en") for i in range(ITEMS)]
            t0 = time.monotonic()
            make_judge("remote", app_name=APP, timeout=1.0).judge(items)
            times[w] = round(time.monotonic() - t0, 2)

        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = round(time.monotonic() - t0, 2)
        handle = serve.get_deployment_handle("JudgeBackend", app_name=APP)
        stats = handle.info.remote().result(timeout_s=10)["stats"]
        before = old_client(handle)
        serve.shutdown()
    finally:
        ray.shutdown()
    return {"item_s": ITEM_S, "workers": WORKERS, "items_per_worker": ITEMS, "client_timeout_s": 1.0,
            "wall_s": wall, "per_worker_s": times, "judge_calls": stats["judge_calls"],
            "max_call_items": stats["max_call_items"], "cap": MAX_CALL_ITEMS, "expired": stats["expired"],
            "longest_call_s": round(stats["max_call_items"] * ITEM_S, 2), "before_fix_client": before}


def old_client(handle: Any) -> dict[str, Any]:
    """The handle path as it was before issue 29: 64-item chunks, no deadline (the service's default of
    judge_timeout_s, 1 s here) and 1 s per result, same load. Counts what failed and how."""
    payload = [{"prompt": f"Q{i}?", "response": "I'm sorry, I can't help with that.", "language": "en"}
               for i in range(ITEMS)]
    failures: list[str] = []

    def worker() -> None:
        responses = [handle.judge.remote(payload[i:i + 64]) for i in range(0, ITEMS, 64)]
        try:
            [r for resp in responses for r in resp.result(timeout_s=1.0)]
        except Exception as exc:  # noqa: BLE001 - what the study would have seen
            failures.append(type(exc).__name__)

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(ITEMS * WORKERS * ITEM_S)  # let the queue drain before the next measurement
    return {"workers_failed": len(failures), "errors": sorted(set(failures))}


def plan() -> dict[str, Any]:
    from pipelines.plan import _split_rows, gpu_hours, served_judge
    from pipelines.presets import load_config

    cfg, deploy = served_judge(load_config("paper"))
    g = gpu_hours(cfg, _split_rows(cfg, [])[0], deploy)
    return {k: g[k] for k in ("busy_h100_hours", "held_h100_hours", "by_stage", "held_by_part", "translate_runs_on",
                              "measured")} | {"sources": {k: v["source"][:40] for k, v in g["figures"].items()}}


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPUs (shared)",
           "empty_gpu_group": empty_gpu_group(), "slow_judge": slow_judge(), "plan": plan()}
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
