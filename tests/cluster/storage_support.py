"""Helpers shared by the storage tests: run the child process, and say which version a directory holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cluster.storage import MANIFEST, read_manifest, recover

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHILD = HERE / "storage_child.py"
sys.path.insert(0, str(HERE))

from storage_child import KILLED, version_files  # noqa: E402

__all__ = ["KILLED", "child", "holds", "version_files"]


def child(*args: str, timeout: float = 60, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHILD), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=stdin)


def holds(directory: Path) -> str | None:
    """The version `directory` holds as a complete output, None when it reads as not done; fails when the
    manifest passes but the files are not exactly one version's (a mix the checksums missed). Read as the
    next driver of the workdir reads it: it restores an interrupted swap first (a plain reader does not)."""
    recover(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    version = manifest["version"]
    on_disk = {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
               if p.is_file() and p.name != MANIFEST}
    assert on_disk == version_files(version), f"{directory} passes its manifest but is not version {version}"
    return version
