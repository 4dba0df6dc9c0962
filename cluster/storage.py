"""The workdir: where every stage writes, so that a kill at any instant leaves a stage's old complete
output or its new one, never a mix.

- `atomic_dir(final)` builds the new output in a hidden temporary sibling, flushes it to disk, then swaps
  it in: rename the old `final` aside, rename the new one in, rename the aside copy to a trash name,
  delete the trash. The next writer (or the workdir's lock holder reading it) that finds the aside copy
  without `final` (a kill between the two renames) renames it back: the old output is restored, never
  half of it.
- `write_manifest` records the size and sha256 of every data file in the directory, after flushing them
  (files and directories) to disk, and writes the manifest last; `read_manifest` checks them and reports a
  directory whose data is missing, truncated or corrupt as not done, so the stage is redone rather than
  failing on every rerun. It only reads: a reader never deletes or renames an output (a writer may be
  replacing it that instant); the lock holder's next write replaces a damaged one.
- `workdir_lock(workdir)` lets one driver at a time use a workdir; a second fails at once, naming the
  holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.secrets import redact_argv, redact_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FILES = "files"  # the manifest's record of its directory's data files: {relative path: {size, sha256}}
LOCK_FILE = ".safedrift.lock"  # in the workdir: who drives it (pid, host, start, command)
SWAP_LOCK = ".swap.lock"  # in a stage output's parent: serialises the renames of a swap and its recovery
_CHUNK = 1 << 20

# Test seam: called with the name of each step of a swap or a manifest write as it completes. The kill
# tests set it (in a subprocess) to `os._exit` at one step. Never set in production.
_on_step: Callable[[str], None] | None = None


class StorageError(RuntimeError):
    """A workdir problem the user can fix; the message says how."""


class WorkdirLockedError(StorageError):
    """Another live driver holds the workdir."""


def _step(name: str) -> None:
    if _on_step is not None:
        _on_step(name)


# ---- flushing to disk ---------------------------------------------------------------------------------

def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable: a rename or a new
    file is not on disk until its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file and directory under `root`, then `root` itself."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                fsync_path(p)
        fsync_path(Path(dirpath))


@contextlib.contextmanager
def atomic_file(path: Path, fsync: bool = True) -> Iterator[Path]:
    """The one way a file is written whole or not at all: the caller writes the temporary path this
    yields (a hidden name in the same directory), which then replaces `path` in one rename; on an error
    it is removed and `path` left as it was. Atomic against a killed process (the rename); `fsync` adds
    durability against a power cut (the file before the rename, its directory after), at a cost that
    small cache entries may skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        fsync_path(path.parent)


def write_text_atomic(path: Path, text: str, fsync: bool = True) -> None:
    """`text` to `path` whole or not at all (atomic_file)."""
    with atomic_file(path, fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: Path, blob: bytes, fsync: bool = True) -> None:
    with atomic_file(path, fsync) as tmp:
        tmp.write_bytes(blob)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_parquet_atomic(df: Any, path: Path) -> None:
    """A polars DataFrame to `path`, via a hidden temporary name in the same directory, flushed to disk
    before the rename (a part file that exists is whole, even after a power cut)."""
    with atomic_file(path) as tmp:
        df.write_parquet(tmp)


# ---- replacing a directory ----------------------------------------------------------------------------

def _aside(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@contextlib.contextmanager
def _swap_lock(parent: Path) -> Iterator[None]:
    """An exclusive flock on `parent/.swap.lock` (a file: NFS cannot lock a directory opened read-only).
    A filesystem without locks still gets kill-safe swaps; only two writers of one output at the same
    instant are then not serialised."""
    fd = os.open(parent / SWAP_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _recover_locked(final: Path) -> None:
    """Under the swap lock: an aside copy without `final` is the old complete output of a swap killed
    between its two renames: rename it back. Beside `final` it is the old output of a swap killed after
    the new one went in: garbage, moved to a trash name for removal."""
    aside = _aside(final)
    if not os.path.lexists(aside):
        return
    if os.path.lexists(final):
        os.rename(aside, _trash_name(final))
        return
    os.rename(aside, final)
    fsync_path(final.parent)
    log.warning("%s: restored the previous output from %s (a replace was interrupted)", final, aside.name)


def recover(final: Path) -> None:
    """Bring `final` back to a complete state after an interrupted `atomic_dir` swap (cheap: one stat
    when there is nothing to do). Readers and writers call it; idempotent."""
    if os.path.lexists(_aside(final)) and final.parent.is_dir():
        with _swap_lock(final.parent):
            _recover_locked(final)


def _trash_name(final: Path) -> Path:
    return final.parent / f".{final.name}.trash-{os.getpid()}-{time.time_ns()}"


def _tmp_pattern(final: Path) -> re.Pattern[str]:
    return re.compile(re.escape(f".{final.name}.") + r"(\d+)@(.+)\.[^.]+\.tmp$")


def _remove_tree(path: Path) -> None:
    """shutil.rmtree, with a step after the first file so a test can kill it half-way."""
    first = True
    for dirpath, dirs, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(dirpath, name))
            if first:
                first = False
                _step("trash-partly-removed")
        for name in dirs:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                os.unlink(p)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(p)
    shutil.rmtree(path, ignore_errors=True)


def _clean_leftovers(final: Path) -> None:
    """Trash of earlier swaps (always garbage) and temporary directories of dead writers on this host
    (a killed stage's half-written output); a live writer's temporary directory is left alone."""
    pattern, host = _tmp_pattern(final), _host()
    trash_prefix = f".{final.name}.trash-"
    with os.scandir(final.parent) as entries:
        for entry in entries:
            if entry.name.startswith(trash_prefix):
                _remove_tree(Path(entry.path))
            elif (m := pattern.match(entry.name)) and m.group(2) == host and not _pid_alive(int(m.group(1))):
                shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yields a temporary sibling directory; on success it replaces `final` so that a kill at any instant
    leaves the old complete `final` or the new one; on failure it is removed and `final` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    _clean_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}@{_host()}.", suffix=".tmp",
                                dir=final.parent))
    try:
        yield tmp
        fsync_tree(tmp)  # the new output is on disk before a rename can make it visible
        _step("new-synced")
        trash = _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if trash is not None:
        _remove_tree(trash)
        _step("trash-removed")


def _swap_in(tmp: Path, final: Path) -> Path | None:
    """The renames, under the parent's swap lock; returns the old output's trash name to delete."""
    aside = _aside(final)
    with _swap_lock(final.parent):
        _recover_locked(final)
        had_old = os.path.lexists(final)
        if had_old:
            os.rename(final, aside)
            _step("old-aside")
        try:
            os.rename(tmp, final)
        except BaseException:
            _recover_locked(final)  # put the old output back before failing
            raise
        _step("new-in")
        fsync_path(final.parent)
        _step("parent-synced")
        if not had_old:
            return None
        trash = _trash_name(final)
        os.rename(aside, trash)
        _step("aside-trashed")
        return trash


# ---- manifests ----------------------------------------------------------------------------------------

def _data_files(directory: Path) -> list[str]:
    """Relative paths of the data files under `directory`: everything but the manifest and hidden names
    (this module's own: temporary files and directories of an interrupted write, swap locks, aside and
    trash copies of a nested output; no stage writes a hidden data file)."""
    out: list[str] = []
    for dirpath, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name != MANIFEST and not name.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, name), directory))
    return out


# (device, inode, size, mtime_ns, ctime_ns) -> sha256 of files this process hashed: a file unchanged
# since is not read again (a model directory is checked once per process, not once per cell). Only files
# last changed over _SETTLED_NS ago are remembered: timestamps tick coarsely (about 4 ms on ext4), so a
# file rewritten within the tick of its hashing would keep its key (git's "racy clean" problem).
_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}
_SETTLED_NS = 2_000_000_000


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(path: Path, fsync: bool = False) -> tuple[int, str]:
    """(size, sha256) of a file; with `fsync`, its data is flushed to disk too (same open)."""
    with open(path, "rb") as fh:
        key = _stat_key(os.fstat(fh.fileno()))
        if fsync:
            os.fsync(fh.fileno())
        if key in _DIGESTS:
            return key[2], _DIGESTS[key]
        h = hashlib.sha256()
        size = 0
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    if len(_DIGESTS) > 100_000:
        _DIGESTS.clear()
    if size == key[2] and time.time_ns() - max(key[3], key[4]) > _SETTLED_NS:
        _DIGESTS[key] = h.hexdigest()
    return size, h.hexdigest()


def write_manifest(directory: Path, **fields: Any) -> dict[str, Any]:
    """Writes `directory/manifest.json` last, after the size and sha256 of every data file in the
    directory (recursively) are recorded and the files and directories are flushed to disk."""
    if FILES in fields:
        raise ValueError(f"write_manifest: '{FILES}' is the manifest's own record of its data files; "
                         "give that field another name")
    files: dict[str, dict[str, Any]] = {}
    for rel in _data_files(directory):
        size, digest = _hash_file(directory / rel, fsync=True)
        files[rel] = {"size": size, "sha256": digest}
    for dirpath, _dirs, _files in os.walk(directory, topdown=False):
        fsync_path(Path(dirpath))
    _step("data-synced")
    manifest = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields, FILES: files}
    write_json_atomic(directory / MANIFEST, manifest)
    _step("manifest-written")
    return manifest


def check_files(directory: Path, files: dict[str, dict[str, Any]], sha256: bool = True) -> dict[str, str]:
    """The recorded files that are missing or differ, with why: {} when all match. Sizes first (a stat
    each), so a truncated file is found before any hashing."""
    bad: dict[str, str] = {}
    for rel, rec in files.items():
        try:  # a file may vanish between two calls: a writer is swapping the directory
            size = (directory / rel).stat().st_size if (directory / rel).is_file() else None
        except FileNotFoundError:
            size = None
        if size is None:
            bad[rel] = "missing"
        elif size != rec["size"]:
            bad[rel] = f"size {size}, manifest says {rec['size']}"
    if sha256 and not bad:
        for rel, rec in files.items():
            try:
                if _hash_file(directory / rel)[1] != rec["sha256"]:
                    bad[rel] = "sha256 differs from the manifest's"
            except FileNotFoundError:
                bad[rel] = "missing"
    return bad


def read_manifest(directory: Path, verify: bool = True) -> dict[str, Any] | None:
    """The manifest of a complete stage output, else None (absent, or its data missing or corrupt).

    Sizes are always checked; `verify` adds sha256 (about 1 GB/s here; each file is hashed once per
    process). Read-only: a damaged output is reported (a warning names its bad files) and read as not
    done, so the stage redoes it and its writer replaces it; the check never deletes or renames anything,
    because a reader racing a writer's swap sees the new files against the old manifest and used to delete
    the new complete output. Only the workdir's lock holder restores an interrupted swap (`recover`).
    A manifest written before checksums were recorded (no `files`) is taken as it is."""
    if _holds_workdir_of(directory):
        recover(directory)
    manifest = _load_manifest(directory)
    for _attempt in range(2):
        files = manifest.get(FILES) if isinstance(manifest, dict) else None
        if not isinstance(files, dict):
            return manifest
        bad = check_files(directory, files, sha256=verify)
        if not bad:
            return manifest
        again = _load_manifest(directory)  # replaced meanwhile (a writer's swap): check the new one once
        if again == manifest:
            break
        manifest = again
    log.warning("%s is incomplete, redoing it: %s", directory,
                "; ".join(f"{rel}: {why}" for rel, why in list(bad.items())[:10]))
    return None


def _load_manifest(directory: Path) -> Any:
    try:
        return read_json(directory / MANIFEST)
    except FileNotFoundError:
        return None


def _holds_workdir_of(directory: Path) -> bool:
    """Whether this process holds the lock of a workdir that contains `directory` (then it is the writer)."""
    if not _HELD:
        return False
    path = Path(os.path.realpath(directory))
    return any(lock.parent in path.parents for lock in _HELD)


# ---- one driver per workdir ---------------------------------------------------------------------------

def _redact(command: str) -> str:
    """A command line for the lock file and messages, through the one redaction of pipelines/secrets.py:
    a secret-named key's value in ``key=value`` and ``key: value`` form (the README's
    ``judge.options={url: ..., token: ...}``), and URI credentials and secret query parameters. The lock
    file is readable by anyone who can read the workdir."""
    return redact_text(command)[:500]


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "a process that has not written its details yet"
    # Redacted again: a lock file written by an older version may hold the command line as it was.
    return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started_at')}, "
            f"command '{_redact(str(info.get('command')))}'")


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _write_holder(fd: int, info: dict[str, Any]) -> None:
    data = (json.dumps(info, sort_keys=True) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


_HELD: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, depth): re-entrant within one process


@contextlib.contextmanager
def workdir_lock(workdir: Path | str) -> Iterator[dict[str, Any]]:
    """Holds `<workdir>/.safedrift.lock` for the block; yields the holder's record (pid, host, started_at,
    command). A second driver on the same workdir gets WorkdirLockedError at once, naming the holder.

    An flock, not an O_EXCL file: the kernel releases it when the holder dies, however it dies (kill -9,
    OOM), so a dead driver's lock is never stale; the file's content only names the holder. A previous
    holder that died without releasing is reported (a warning) and its lock taken over. Works across
    hosts on NFS (Linux maps flock to NFS locks); on a filesystem without locks it falls back to the
    holder record (a live pid on this host blocks), with a warning. Re-entrant within one process."""
    path = Path(workdir).expanduser().resolve() / LOCK_FILE
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
        try:
            yield _read_holder(fd)
        finally:
            _HELD[path] = (fd, _HELD[path][1] - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        previous = _acquire(fd, path)
        info = {"pid": os.getpid(), "host": _host(), "command": _redact(redact_argv(sys.argv)),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if previous and (previous.get("pid"), previous.get("host")) != (info["pid"], info["host"]):
            log.warning("workdir %s: taking over the lock of a driver that ended without releasing it "
                        "(%s; %s)", path.parent, _holder_text(previous), _liveness(previous))
        _write_holder(fd, info)
        _HELD[path] = (fd, 1)
        try:
            yield info
        finally:
            del _HELD[path]
            _write_holder(fd, {})  # released cleanly: the next holder has nothing to report
    finally:
        os.close(fd)  # closing releases the flock


def _liveness(info: dict[str, Any]) -> str:
    if info.get("host") != _host():
        return "it ran on another host and no longer holds the lock"
    pid = info.get("pid")
    return "that process is gone" if isinstance(pid, int) and not _pid_alive(pid) else \
        f"pid {pid} is alive but no longer holds the lock (pid reused?)"


def _acquire(fd: int, path: Path) -> dict[str, Any]:
    """Takes the flock without waiting; returns the previous holder's record (empty after a clean
    release), or raises WorkdirLockedError naming the live holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _locked_error(path, _read_holder(fd)) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        return _acquire_without_flock(fd, path)
    return _read_holder(fd)


def _acquire_without_flock(fd: int, path: Path) -> dict[str, Any]:
    log.warning("workdir %s: this filesystem has no file locks; only a live driver on this host is "
                "detected (put the workdir on a local disk or NFS to stop drivers on other hosts)", path.parent)
    holder = _read_holder(fd)
    pid = holder.get("pid")
    if holder.get("host") == _host() and isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
        raise _locked_error(path, holder)
    return holder


def _locked_error(path: Path, holder: dict[str, Any]) -> WorkdirLockedError:
    stop = f"stop it (kill {holder.get('pid')} on host {holder.get('host')})" if holder else "stop it"
    return WorkdirLockedError(
        f"workdir {path.parent} is in use by another safedrift driver: {_holder_text(holder)}. "
        f"Wait for it to finish, {stop}, or give this run another workdir (workdir=/other/path); "
        f"the lock is {path}")
