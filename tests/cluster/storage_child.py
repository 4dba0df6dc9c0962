"""A child process for the storage tests: runs one storage operation and dies where it is told to
(os._exit, as a SIGKILL would: no cleanup, no finally blocks). Run as `python storage_child.py MODE ...`."""

from __future__ import annotations

import os
import resource
import select
import sys
import time
from pathlib import Path

from cluster import storage

KILLED = 77  # the exit status of a child that died at its kill point


def version_files(version: str) -> dict[str, bytes]:
    """What output `version` holds: its files differ in names and sizes from any other version's, so a
    mix of two versions (or a truncated file) can be told apart from either."""
    n = len(version)
    return {
        "data.bin": (version.encode() * 12_000)[: 20_000 + 997 * n],
        "sub/part-00000.txt": f"rows of {version}\n".encode() * (50 + n),
        f"only_{version}.txt": version.encode(),
    }


def kill_hook(kill_at: str) -> None:
    def on_step(name: str) -> None:
        print(f"step {name}", flush=True)
        if name == kill_at:
            os._exit(KILLED)

    storage._on_step = on_step


def write_version(directory: Path, version: str, kill_at: str) -> None:
    files = version_files(version)
    for i, (rel, data) in enumerate(files.items()):
        p = directory / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if kill_at == "in-body" and i == 0:
            print("step in-body", flush=True)
            os._exit(KILLED)
    storage.write_manifest(directory, version=version)


def swap(final: str, kill_at: str, version: str) -> None:
    kill_hook(kill_at)
    with storage.atomic_dir(Path(final)) as tmp:
        write_version(tmp, version, kill_at)


def inplace(directory: str, kill_at: str, version: str) -> None:
    kill_hook(kill_at)
    write_version(Path(directory), version, kill_at)


def swap_loop(final: str, version: str, n: str) -> None:
    for _ in range(int(n)):
        with storage.atomic_dir(Path(final)) as tmp:
            write_version(tmp, version, "")


def swap_check_loop(final: str, n: str) -> None:
    """Replaces `final` with versions w0..w{n-1}; after each, checks the output it just wrote is still
    there and whole (a reader that deletes what it misreads during the swap takes it away)."""
    lost = 0
    for i in range(int(n)):
        version = f"w{i}"
        with storage.atomic_dir(Path(final)) as tmp:
            write_version(tmp, version, "")
        manifest = storage.read_manifest(Path(final))
        on_disk = {str(p.relative_to(final)): p.read_bytes() for p in Path(final).rglob("*")
                   if p.is_file() and p.name != storage.MANIFEST}
        if manifest is None or manifest.get("version") != version or on_disk != version_files(version):
            lost += 1
    print(f"lost {lost} of {n}", flush=True)


def read_loop(final: str, stop_file: str, seconds: str) -> None:
    """Checks `final` over and over until `stop_file` exists (at most `seconds`), as `safedrift report`
    or a second study reading a shared output would; prints how many reads found it complete."""
    deadline, done, not_done = time.monotonic() + float(seconds), 0, 0
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        if storage.read_manifest(Path(final)) is None:
            not_done += 1
        else:
            done += 1
    print(f"reads {done} complete {not_done} not", flush=True)


def hold_lock(workdir: str, seconds: str, *_command: str) -> None:  # the rest: a command line to record
    with storage.workdir_lock(workdir):
        print("held", flush=True)
        # Bounded: the parent closes our stdin to release us; past `seconds` we release anyway.
        deadline = time.monotonic() + float(seconds)
        while (left := deadline - time.monotonic()) > 0:
            if select.select([sys.stdin], [], [], left)[0] and not sys.stdin.readline():
                break  # EOF


def die_holding(workdir: str) -> None:
    with storage.workdir_lock(workdir):
        print("held", flush=True)
        os._exit(KILLED)


def fsize_stage(final: str, limit: str) -> None:
    """A stage writing more than RLIMIT_FSIZE allows in one file: the write fails with EFBIG."""
    import numpy as np
    import polars as pl

    big = pl.DataFrame({"x": np.random.default_rng(0).random(300_000)})  # about 2.4 MB of Parquet
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    try:
        with storage.atomic_dir(Path(final)) as tmp:
            storage.write_parquet_atomic(big, tmp / "part-00000.parquet")
            storage.write_manifest(tmp, version="big")
    except Exception as exc:  # polars wraps the OSError in its own ComputeError
        print(f"failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        sys.exit(3)


MODES = {"swap": swap, "inplace": inplace, "swap-loop": swap_loop, "hold-lock": hold_lock,
         "die-holding": die_holding, "fsize-stage": fsize_stage, "swap-check-loop": swap_check_loop,
         "read-loop": read_loop}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
