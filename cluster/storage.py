"""The workdir: where every stage writes. Writes are atomic (temporary name, then rename) and every
stage writes its manifest last, so a manifest's presence means the stage's output is complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def workdir_path(workdir: str) -> Path:
    if "://" in workdir:
        # Stages read models and write Parquet with local tools; remote workdirs are mounted instead
        # (an RWX volume on Kubernetes). Say so rather than failing later in an odd place.
        raise ValueError(
            f"workdir '{workdir}' is a URI; safedrift needs a mounted path for its workdir "
            "(use an RWX volume or a FUSE mount, and keep s3:// for Ray's storage_path)"
        )
    p = Path(workdir).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def write_text_atomic(path: Path, text: str, fsync: bool = True) -> None:
    """Atomic against a killed process (the rename); `fsync` adds durability against a power cut, at a
    cost that small cache entries may skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yields a temporary sibling directory; on success it replaces `final` in one rename, on failure
    it is removed, so `final` is never half-written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(directory: Path, **fields: Any) -> dict[str, Any]:
    manifest = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    return read_json(path) if path.exists() else None


def write_parquet_atomic(df: Any, path: Path) -> None:
    """A polars DataFrame to `path`, via a hidden temporary name in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
