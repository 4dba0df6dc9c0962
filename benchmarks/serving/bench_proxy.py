"""One client trying to stall the judge service through Serve's HTTP proxy (issue 30, items 2 and 3):
half-open connections, slow bodies and an oversized header from one client while a second client sends
ordinary requests with a deadline. Starts `safedrift serve` on 127.0.0.1 (its own local Ray cluster) with
or without serving/proxy.py's limits, and prints the figures as a Markdown row for RESULTS.md.

    .venv/bin/python benchmarks/serving/bench_proxy.py                 # with the proxy limits
    .venv/bin/python benchmarks/serving/bench_proxy.py --no-limits     # Serve's proxy as it comes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.proxy_probe import probe, probe_config, start_serve, stop_serve  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-limits", action="store_true", help="run Serve's proxy without serving/proxy.py")
    ap.add_argument("--idle", type=int, default=1000, help="half-open connections (at most 2000)")
    ap.add_argument("--slow", type=int, default=64, help="slow-body connections (at most 256)")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the second client runs (at most 120)")
    ap.add_argument("--deadline", type=float, default=5.0, help="the second client's per-request deadline")
    ap.add_argument("--big-header-mib", type=int, default=64, help="one header of this size (0: none)")
    ap.add_argument("--head-timeout", type=float, default=None, help="SAFEDRIFT_PROXY_HEADER_TIMEOUT_S")
    ap.add_argument("--body-timeout", type=float, default=None, help="SAFEDRIFT_PROXY_BODY_TIMEOUT_S")
    args = ap.parse_args()
    args.idle, args.slow, args.seconds = min(args.idle, 2000), min(args.slow, 256), min(args.seconds, 120.0)

    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    tokens = {"attacker": "attacker-" + secrets.token_hex(16), "good": "good-" + secrets.token_hex(16)}
    (tmp / "tokens").mkdir()
    for name, token in tokens.items():
        (tmp / "tokens" / name).write_text(token)
    port = _free_port()
    (tmp / "judge.yaml").write_text(yaml.safe_dump(probe_config(port)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEDRIFT_JUDGE_TOKEN")}
    env.update(SAFEDRIFT_JUDGE_TOKENS_DIR=str(tmp / "tokens"), RAY_AUTH_MODE=env.get("RAY_AUTH_MODE", "disabled"),
               RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="" if args.no_limits else "serving.proxy:proxy_middlewares")
    if args.head_timeout:
        env["SAFEDRIFT_PROXY_HEADER_TIMEOUT_S"] = str(args.head_timeout)
    if args.body_timeout:
        env["SAFEDRIFT_PROXY_BODY_TIMEOUT_S"] = str(args.body_timeout)
    env.pop("RAY_ADDRESS", None)
    proc = start_serve(str(tmp / "judge.yaml"), port, env, str(REPO))
    try:
        t0 = time.time()
        result = asyncio.run(probe(f"http://127.0.0.1:{port}", tokens["attacker"], tokens["good"], args.idle,
                                   args.slow, args.seconds, args.deadline, args.big_header_mib << 20))
    finally:
        stop_serve(proc)
    r = result.as_dict()
    print(json.dumps({"limits": not args.no_limits, "started": time.strftime("%H:%M:%S", time.gmtime(t0)),
                      "load": os.getloadavg()[0], **r}, indent=1))
    print(f"| {'on' if not args.no_limits else 'off'} | {args.idle} | {args.slow} | {r['good_sent']} | "
          f"{r['good_failed']} | {r['good_wrong']} | {r['good_p50_ms']} | {r['good_max_ms']} | "
          f"{r['attacker_open_at_end']} | {r['slow_answers']} | {r['big_header_status']} ({r['big_header_s']} s) |")


if __name__ == "__main__":
    main()
