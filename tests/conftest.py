"""Shared fixtures: one real local Ray cluster and one real smoke study per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Before Ray or DeepSpeed are imported anywhere: a local cluster without token auth (tests only), and the
# DeepSpeed CPU comm op built once into the project cache (.ci/run warms it).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # the smoke study uses its own sqlite store
os.environ.pop("SAFEDRIFT_WORKDIR", None)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # A library that touched Ray first (Ray Train's local mode, Ray Data, Serve) may have started it with the
    # machine's 2 CPUs; the tests need the 4 logical CPUs a laptop study runs with (ray.num_cpus in the config).
    if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) < 4:
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The smoke preset, end to end, once per session, run the way a user runs it (`safedrift run` in its
    own process, with its console); tests assert on what it wrote and on what it printed."""
    import json
    import subprocess
    import sys
    import time

    from pipelines.presets import load_config
    from pipelines.run import run_study

    workdir = tmp_path_factory.mktemp("smoke")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "-c", "smoke", f"workdir={workdir}"],
                          capture_output=True, text=True, timeout=1500, cwd=REPO)
    seconds = time.time() - t0
    assert proc.returncode == 0, f"safedrift run failed ({proc.returncode}); its log is under {workdir}/logs"
    cfg = load_config("smoke", [f"workdir={workdir}"])
    result = run_study(cfg)  # every stage reused: reads what the run wrote, starts no Ray
    sweep = json.loads(next(workdir.glob("sweeps/*/*/manifest.json")).read_text())
    result.stages = sweep["stages"]  # what the CLI run itself did, stage by stage
    return {"cfg": cfg, "result": result, "seconds": seconds, "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.fixture(scope="session")
def require_tool():
    """Skip locally when a system tool is missing; in CI (CI=true) that is a broken setup: fail."""
    import shutil

    def check(name: str) -> None:
        if shutil.which(name) is None:
            msg = f"{name} is not installed (the README's setup installs it)"
            if os.environ.get("CI") == "true":
                pytest.fail(msg)
            pytest.skip(msg)

    return check
