"""A full disk during a stage leaves no manifest: the stage reads as not done (or as its old output),
never as complete. For real: a 1 MiB tmpfs (root, mount allowed), and RLIMIT_FSIZE (any Linux) where a
write past the limit fails with EFBIG as it would with ENOSPC."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_support import child, holds, version_files

from cluster.storage import (
    MANIFEST,
    SWAP_LOCK,
    atomic_dir,
    read_manifest,
    write_manifest,
    write_parquet_atomic,
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a 1 MiB tmpfs needs root and mount(8); the RLIMIT_FSIZE test covers this case")
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                         text=True, timeout=30)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({run.stderr.strip()}); the RLIMIT_FSIZE test covers this case")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def write_version(directory: Path, version: str) -> None:
    for rel, data in version_files(version).items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    write_manifest(directory, version=version)


def big_frame():
    import numpy as np
    import polars as pl

    return pl.DataFrame({"x": np.random.default_rng(0).random(300_000)})  # about 2.4 MB of Parquet


def test_disk_full_during_a_stage_keeps_the_old_output(small_disk: Path) -> None:
    final = small_disk / "out"
    with atomic_dir(final) as tmp:
        write_version(tmp, "v1")
    with pytest.raises(Exception, match="No space left on device"), atomic_dir(final) as tmp:
        write_parquet_atomic(big_frame(), tmp / "part-00000.parquet")
        write_manifest(tmp, version="v2")
    assert holds(final) == "v1"
    assert sorted(p.name for p in small_disk.iterdir()) == [SWAP_LOCK, "out"]  # the half-written copy is gone


def test_disk_full_on_a_first_run_leaves_no_manifest(small_disk: Path) -> None:
    final = small_disk / "out"
    with pytest.raises(Exception, match="No space left on device"), atomic_dir(final) as tmp:
        write_parquet_atomic(big_frame(), tmp / "part-00000.parquet")
        write_manifest(tmp, version="v2")
    assert read_manifest(final) is None and not final.exists()
    assert not list(small_disk.rglob(MANIFEST))


def test_disk_full_when_the_manifest_is_written_leaves_none(small_disk: Path) -> None:
    """A cell directory gets its manifest in place: the data fits, the disk fills, the manifest cannot
    be written, and the directory reads as not done (no empty or partial manifest.json)."""
    d = small_disk / "cell"
    d.mkdir()
    with open(d / "data.bin", "wb", buffering=0) as fh:  # fill the disk to the last block
        with pytest.raises(OSError) as full:
            for _ in range(1024):  # 4 MiB at most: more than the disk holds
                fh.write(b"x" * 4096)
        assert full.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as err:
        write_manifest(d, version="v1")
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in d.iterdir()) == ["data.bin"]  # no manifest, no temporary file
    assert read_manifest(d) is None


def test_file_size_limit_during_a_stage_leaves_no_manifest(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        write_version(tmp, "v1")
    run = child("fsize-stage", str(final), str(512 * 1024))
    assert run.returncode == 3, run.stdout + run.stderr
    assert "File too large" in run.stdout  # EFBIG, the write failed rather than being cut short silently
    assert holds(final) == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [SWAP_LOCK, "out"]
