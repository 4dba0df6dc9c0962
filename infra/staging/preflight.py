"""Pre-flight of the paper sweep on a GPU node, after staging and before the RayJob is resumed: what
depends on the user's cluster and would otherwise fail hours in. Exits 1 naming the fix for each of:

- the shared volume is not writable by the pods' uid/gid (NFS, CephFS and Filestore ignore `fsGroup`);
- a staged model has no whole weights (stage.py's check: config.json and every indexed shard);
- the GPU node's NVIDIA driver supports an older CUDA than the image's torch was built for (torch 2.14.0
  and vLLM 0.33.0 from PyPI are CUDA 13 builds: driver 580 or newer).

    python preflight.py --config /config/paper.yaml      # the safedrift-preflight Job (infra/staging)"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

from stage import hub_models, weights_problem

from pipelines.layout import model_dir_root
from pipelines.presets import load_config

# The driver branch that first supports each CUDA major (NVIDIA's CUDA toolkit release notes).
MIN_DRIVER = {12: 525, 13: 580}


def volume_problem(root: Path) -> str | None:
    """Why the pods cannot write the shared volume at `root`, or None."""
    probe = root / f".preflight-{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return (f"the shared volume {root} is not writable by uid {os.getuid()} gid {os.getgid()} "
                f"({exc.strerror or type(exc).__name__}): NFS, CephFS and Filestore ignore the pods' fsGroup, so "
                f"make the export writable by that uid/gid (chown -R {os.getuid()}:{os.getgid()} on the server, "
                "or the storage class's uid/gid mount options): infra/README.md, step 0")
    return None


def driver_cuda() -> tuple[int, int] | None:
    """The CUDA version the node's driver supports (cuDriverGetVersion), None without a driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def driver_problem(supported: tuple[int, int] | None, needed: str | None) -> str | None:
    """Why the image's torch (built for CUDA `needed`, e.g. "13.0") cannot use the node's driver."""
    if needed is None:
        return "the image's torch is a CPU build: build the CUDA image (docker/Dockerfile.cuda)"
    major, minor = (int(x) for x in needed.split(".")[:2])
    if supported is None:
        return ("no NVIDIA driver is visible in this pod (libcuda.so.1): run it on a GPU node with the NVIDIA "
                "device plugin or GPU operator (infra/README.md, step 0)")
    if supported < (major, minor):
        return (f"the GPU node's NVIDIA driver supports CUDA {supported[0]}.{supported[1]}, but the image's torch "
                f"and vLLM are CUDA {needed} builds: upgrade the GPU nodes' driver to {MIN_DRIVER.get(major, '?')} "
                "or newer (infra/README.md, step 0)")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--no-gpu", action="store_true", help="skip the driver check (a node without a GPU)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    root = model_dir_root()
    problems = [volume_problem(Path(os.environ.get("SAFEDRIFT_WORKDIR", cfg.workdir)))]
    if root is None:
        problems.append("SAFEDRIFT_MODEL_DIR is not set (the ConfigMap safedrift-env sets it)")
    else:
        problems += [f"model {name} in {root / name}: {p}: rerun the staging Job (infra/staging)"
                     for name in hub_models(cfg) if (p := weights_problem(root / name))]
    if not args.no_gpu:
        import torch

        problems.append(driver_problem(driver_cuda(), torch.version.cuda))
    problems = [p for p in problems if p]
    for p in problems:
        print(f"preflight: {p}", file=sys.stderr)
    print("preflight: " + (f"{len(problems)} problem(s)" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
