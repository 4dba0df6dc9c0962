"""Helpers for the sweep tests: subprocess drivers with a Ray cluster of their own, stopping exactly the
processes a test started (never `ray stop`, which would stop other people's clusters on this machine),
a throwaway MLflow server over HTTP, and a workdir seeded from the session's smoke study."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mlflow_support import mlflow_server  # noqa: F401 - re-exported to the sweep tests

REPO = Path(__file__).resolve().parents[2]
TAG_VAR = "SAFEDRIFT_TEST_TAG"


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


class PrivateRay:
    """Environment for a subprocess that starts its own Ray cluster: a private RAY_TMPDIR (Ray's session
    files and its "current cluster" address file, so nothing of the machine's default /tmp/ray is
    touched) and a tag variable that every descendant inherits (raylet, GCS, workers), which is how
    `kill_all` finds them: Ray renames its worker processes, so their command lines say nothing."""

    def __init__(self) -> None:
        # Short: Ray's unix sockets live under it and a socket path is limited to 107 bytes.
        self.tmp = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
        self.tag = uuid.uuid4().hex

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "SAFEDRIFT_WORKDIR")}
        env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(self.tmp), TOKENIZERS_PARALLELISM="false",
                   TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"), PYTHONUNBUFFERED="1",
                   RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="120", **{TAG_VAR: self.tag})
        env.update(extra)
        return env

    def processes(self) -> list[int]:
        """PIDs of live processes that carry this tag."""
        needle = f"{TAG_VAR}={self.tag}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in environ.split(b"\0") and state != "Z":
                found.append(int(entry.name))
        return found

    def kill_all(self, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> list[int]:
        """SIGKILLs the driver's process group, then every tagged process by PID until none is left;
        returns the PIDs that outlived the process group."""
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        survivors: list[int] = []
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            survivors += [p for p in left if p not in survivors]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        if left := self.processes():
            raise AssertionError(f"processes of the test's Ray cluster still alive: {left}")
        return survivors

    def close(self) -> None:
        self.kill_all()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_driver(script: Path, args: list[str], log: Path, timeout: float) -> int:
    """Runs a driver script (it starts its own Ray cluster) in a subprocess with a private Ray
    environment, its output in `log`; stops every process it started. Returns its exit code."""
    ray = PrivateRay()
    try:
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, str(script), *args], stdout=fh, stderr=subprocess.STDOUT,
                                    env=ray.env(), cwd=REPO, start_new_session=True)
            try:
                return proc.wait(timeout=timeout)
            finally:
                ray.kill_all(proc)
    finally:
        ray.close()


def seed_workdir(src: Path, dest: Path, cfg, *, checkpoints: list, cells: list) -> str:
    """Copies what the session's smoke study already computed into a new workdir: the data sets (eval
    suite included) and translation cache (content-addressed, so identical for the same smoke config), the fine-tuned
    weights of `checkpoints` and the finished outputs of `cells`. Returns the data sets' hash."""
    from pipelines.cells import cell_dir, study_hashes, train_hash

    ds_hash, _ = study_hashes(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("datasets", "translation_cache"):
        if (src / name).exists():
            shutil.copytree(src / name, dest / name)
    for cell in checkpoints:
        rel = Path("checkpoints") / train_hash(cfg, cell, ds_hash)
        shutil.copytree(src / rel, dest / rel)
    for cell in cells:
        shutil.copytree(cell_dir(src, cfg, cell, ds_hash), cell_dir(dest, cfg, cell, ds_hash))
    return ds_hash


def file_snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mtime_ns, bytes) of every file under `directory`."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def flat_config(obj: object, prefix: str = "") -> dict[str, str]:
    """Every leaf of a resolved config, dotted; written independently of the code under test."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out |= flat_config(v, f"{prefix}.{k}" if prefix else k)
        return out
    return {prefix: str(obj)}
