"""One driver per workdir: a second fails at once naming the holder; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from storage_support import CHILD, KILLED, REPO, child

from cluster.storage import LOCK_FILE, StorageError, WorkdirLockedError, _redact, workdir_lock


def start_holder(workdir: Path, seconds: int = 60, *command: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, str(CHILD), "hold-lock", str(workdir), str(seconds), *command], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()  # its loop ends on EOF
    holder.wait(timeout=30)


def test_a_second_driver_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(WorkdirLockedError) as err, workdir_lock(tmp_path):
            pass
        # At once: not after the holder (alive for up to 60 s) lets go.
        assert time.monotonic() - t0 < 10
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg
        assert "hold-lock" in msg and "started 20" in msg  # its command and start time
        assert "workdir=" in msg  # the way out
        assert isinstance(err.value, StorageError)
    finally:
        release(holder)
    with workdir_lock(tmp_path) as info:  # free again once the holder is done
        assert info["pid"] == os.getpid()


def test_a_dead_holders_lock_is_taken_over_with_a_message(tmp_path: Path, caplog) -> None:
    run = child("die-holding", str(tmp_path))
    assert run.returncode == KILLED and run.stdout.strip() == "held"
    left = json.loads((tmp_path / LOCK_FILE).read_text())
    assert left["pid"] != os.getpid()  # the dead driver's record is still there
    with caplog.at_level(logging.WARNING, logger="cluster.storage"), workdir_lock(tmp_path) as info:
        assert info["pid"] == os.getpid()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "taking over" in caplog.text and f"pid {left['pid']}" in caplog.text
    assert "that process is gone" in caplog.text


def test_a_clean_release_leaves_nothing_to_report(tmp_path: Path, caplog) -> None:
    release(start_holder(tmp_path))
    with caplog.at_level(logging.WARNING, logger="cluster.storage"), workdir_lock(tmp_path):
        pass
    assert "taking over" not in caplog.text


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with workdir_lock(tmp_path) as outer, workdir_lock(tmp_path) as inner:
        assert inner["pid"] == outer["pid"] == os.getpid()
    # … and held by this process until the outer block ends: another process is refused meanwhile.
    with workdir_lock(tmp_path):
        run = child("hold-lock", str(tmp_path), "1")
        assert run.returncode != 0 and "WorkdirLockedError" in run.stderr and f"pid {os.getpid()}" in run.stderr


def test_secrets_in_the_command_line_are_not_written() -> None:
    cmd = "safedrift run mlflow.tracking_uri=https://alice:hunter2@mlflow.example hf_token=hf_abc judge.name=x"
    out = _redact(cmd)
    assert "hunter2" not in out and "hf_abc" not in out and "alice" not in out
    assert "judge.name=x" in out and "mlflow.example" in out


TOKEN = "tok-" + "c0ffee5eed0123456789abcdef"  # planted; searched for in the lock file and the error
PLANTED = [  # each form a user writes a secret in on the command line (the README's first)
    f"judge.options={{url: http://judge:8000, token: {TOKEN}}}",
    f'judge.options={{"url": "http://judge:8000", "token": "{TOKEN}"}}',
    f"judge.options.token={TOKEN}",
    f"mlflow.tracking_uri=https://alice:{TOKEN}@mlflow.example",
    f"translate.options.deepl.api_key={TOKEN}",
    f"data.url=https://bucket.s3.amazonaws.com/x.parquet?X-Amz-Signature={TOKEN}&X-Amz-Date=1",
    f"data.url=https://acct.blob.core.windows.net/c/x?sv=2024&sig={TOKEN}",
    f"data.url=https://api.example/v1/rows?key={TOKEN}",
]


@pytest.mark.parametrize("planted", PLANTED)
def test_no_secret_in_the_lock_file_or_the_in_use_error(tmp_path: Path, planted: str) -> None:
    """Issue 30: the lock file (mode 0644) and the 'workdir in use' error carried the README's
    judge.options={..., token: ...} and signed URLs' keys as typed."""
    holder = start_holder(tmp_path, 60, "run", "-c", "smoke", planted)
    try:
        record = (tmp_path / LOCK_FILE).read_text()
        with pytest.raises(WorkdirLockedError) as err, workdir_lock(tmp_path):
            pass
    finally:
        release(holder)
    assert TOKEN not in record and TOKEN not in str(err.value)
    command = json.loads(record)["command"]
    assert ("***" in command or "alice" not in command) and "run -c smoke" in str(err.value)


def test_a_secret_in_an_old_lock_file_is_not_repeated_in_the_error(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        old = json.loads((tmp_path / LOCK_FILE).read_text()) | {"command": f"safedrift run hf_token={TOKEN}"}
        (tmp_path / LOCK_FILE).write_text(json.dumps(old))  # as a version before the redaction wrote it
        with pytest.raises(WorkdirLockedError) as err, workdir_lock(tmp_path):
            pass
    finally:
        release(holder)
    assert TOKEN not in str(err.value) and "hf_token=***" in str(err.value)
