"""Data reaches the disk before the manifest names it: the system calls of a real replace, traced with
strace, show every data file and directory fsynced before the manifest's rename, and the new output
synced before it is renamed in."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from storage_support import CHILD, REPO

from cluster.storage import atomic_dir, write_manifest

OPEN = re.compile(r'^(?:\d+ )?openat\(AT_FDCWD, "([^"]+)", [^)]*\) = (\d+)$')
FSYNC = re.compile(r"^(?:\d+ )?fsync\((\d+)\)\s+= 0$")
RENAME = re.compile(r'^(?:\d+ )?rename(?:at2?)?\((?:AT_FDCWD, )?"([^"]+)", (?:AT_FDCWD, )?"([^"]+)"')


def traced_events(tmp_path: Path, *args: str) -> list[tuple[str, ...]]:
    """("fsync", path) and ("rename", src, dst) in the order the child made them."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace): the fsync order is not traced")
    log = tmp_path / "strace.log"
    # The main thread only (no -f): the swap runs there, and traced threads of the libraries the child
    # imports would split its calls into "<unfinished ...>" / "resumed" lines under load.
    run = subprocess.run(["strace", "-e", "trace=openat,fsync,rename,renameat,renameat2", "-o", str(log),
                          sys.executable, str(CHILD), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    if run.returncode != 0 and "ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr
    fds: dict[str, str] = {}
    events: list[tuple[str, ...]] = []
    for line in log.read_text().splitlines():
        if m := OPEN.match(line):
            fds[m.group(2)] = m.group(1)
        elif m := FSYNC.match(line):
            events.append(("fsync", fds[m.group(1)]))
        elif m := RENAME.match(line):
            events.append(("rename", m.group(1), m.group(2)))
    return events


def test_a_replace_syncs_data_then_manifest_then_renames(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:  # an old output, so the swap has its aside step too
        (tmp / "x").write_text("old")
        write_manifest(tmp)
    events = traced_events(tmp_path, "swap", str(final), "", "v1")
    renames = [e for e in events if e[0] == "rename"]
    (manifest_rename,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2].endswith("/manifest.json")]
    (swap_in,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(final)]
    new = Path(events[swap_in][1])  # the temporary directory the stage wrote
    synced_before = {e[1] for e in events[:manifest_rename] if e[0] == "fsync"}
    for rel in ("data.bin", "sub/part-00000.txt", "only_v1.txt", "sub", ""):
        assert str(new / rel).rstrip("/") in synced_before, f"{rel or 'the directory'} not synced before the manifest"
    # The manifest file itself was synced before its rename, and the directory holding that rename after.
    assert any(e[0] == "fsync" and "/.manifest.json." in e[1] for e in events[:manifest_rename])
    assert ("fsync", str(new)) in events[manifest_rename:swap_in]
    # The swap: old aside, new in, the parent synced, then the aside copy to the trash.
    assert [Path(r[2]).name.split("-")[0] for r in renames[-3:]] == [".out.old", "out", ".out.trash"]
    assert ("fsync", str(tmp_path)) in events[swap_in:]
