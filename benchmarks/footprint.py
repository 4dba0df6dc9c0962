"""Wall time and peak memory of a whole command, Ray's processes included.

`/usr/bin/time -v` sees only the driver; Ray's raylet, GCS and workers are the driver's descendants, so
this samples the resident memory of the whole process tree twice a second.

    python benchmarks/footprint.py -- .venv/bin/safedrift run -c smoke workdir=/tmp/x
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process may exit while we look
            total += p.memory_info().rss
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", default=None, help="file for the command's output (default: inherit)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    out = open(args.log, "w") if args.log else None  # noqa: SIM115 - closed below
    t0 = time.time()
    child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, tree_rss(proc))
        time.sleep(0.5)
    result = {"cmd": " ".join(cmd), "rc": child.returncode, "wall_s": round(time.time() - t0, 1),
              "peak_rss_gib": round(peak / 2**30, 2), "cpus": psutil.cpu_count(),
              "load_avg_end": [round(x, 1) for x in psutil.getloadavg()]}
    if out:
        out.close()
    print(json.dumps(result))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
