"""A stage's output replaced under a kill at every step of the swap: the directory reads as the old
complete output or the new one, and the next writer succeeds and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from storage_support import KILLED, child, holds, version_files

from cluster.storage import SWAP_LOCK, atomic_dir, read_manifest, workdir_lock, write_manifest


def write_in_process(final: Path, version: str) -> None:
    with atomic_dir(final) as tmp:
        for rel, data in version_files(version).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        write_manifest(tmp, version=version)


def swap_steps(tmp_path: Path) -> list[str]:
    """The steps a replace goes through, as the code reports them (not a list kept by hand)."""
    final = tmp_path / "probe" / "out"
    write_in_process(final, "v1")
    run = child("swap", str(final), "", "v2")
    assert run.returncode == 0, run.stderr
    steps = [line.split(" ", 1)[1] for line in run.stdout.splitlines() if line.startswith("step ")]
    assert holds(final) == "v2"
    return ["in-body", *steps]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in ("out", SWAP_LOCK))


def test_kill_at_every_step_of_a_replace(tmp_path: Path) -> None:
    steps = swap_steps(tmp_path)
    # The steps this test must cover: the manifest's write inside the stage and every rename of the swap.
    for needed in ("data-synced", "manifest-written", "new-synced", "old-aside", "new-in", "aside-trashed",
                   "trash-partly-removed", "trash-removed"):
        assert needed in steps
    new_from = steps.index("new-in")
    for k, step in enumerate(steps):
        parent = tmp_path / f"k{k}"
        final = parent / "out"
        write_in_process(final, "v1")
        run = child("swap", str(final), step, "v2")
        assert run.returncode == KILLED, f"{step}: the child did not die there ({run.returncode}: {run.stderr})"
        expected = "v2" if k >= new_from else "v1"
        assert holds(final) == expected, f"killed after {step}"
        # The next writer recovers from whatever the kill left (aside copy, trash, a dead temp dir).
        write_in_process(final, "v3")
        assert holds(final) == "v3"
        assert leftovers(parent) == [], f"killed after {step}: left {leftovers(parent)}"


def test_kill_during_a_first_write_leaves_nothing_or_the_new_output(tmp_path: Path) -> None:
    steps = [s for s in swap_steps(tmp_path) if s not in ("old-aside", "aside-trashed", "trash-partly-removed")]
    new_from = steps.index("new-in")
    for k, step in enumerate(steps):
        final = tmp_path / f"k{k}" / "out"
        run = child("swap", str(final), step, "v2")
        if step in ("trash-removed",):  # no old output: the swap has no trash to remove, and ends before
            assert run.returncode == 0
            continue
        assert run.returncode == KILLED, f"{step}: {run.returncode} {run.stderr}"
        assert holds(final) == ("v2" if k >= new_from else None), f"killed after {step}"
        if k < new_from:
            assert not final.exists()


def test_the_lock_holder_restores_the_old_output_from_its_aside_copy_a_reader_does_not(tmp_path: Path) -> None:
    final = tmp_path / "out"
    write_in_process(final, "v1")
    run = child("swap", str(final), "old-aside", "v2")
    assert run.returncode == KILLED
    assert not final.exists()  # the kill came between the two renames
    assert read_manifest(final) is None and (tmp_path / ".out.old").exists()  # a reader renames nothing
    with workdir_lock(tmp_path):
        assert read_manifest(final)["version"] == "v1"  # the workdir's driver put the old output back
    assert holds(final) == "v1"
    assert not (tmp_path / ".out.old").exists()


def test_concurrent_readers_never_delete_a_writers_new_output(tmp_path: Path) -> None:
    """Issue 30: a reader that checked an output while a writer replaced it deleted the new complete
    output (20 of 41 versions). Three readers check it in a loop while the writer replaces it 40 times
    and checks each version it wrote is still whole: none may be lost."""
    import subprocess
    import sys

    from storage_support import CHILD, REPO

    final, stop = tmp_path / "out", tmp_path / "stop"
    write_in_process(final, "v0")
    readers = [subprocess.Popen([sys.executable, str(CHILD), "read-loop", str(final), str(stop), "60"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        writer = child("swap-check-loop", str(final), "40", timeout=120)
    finally:
        stop.touch()
        outs = [p.communicate(timeout=60) for p in readers]
    assert writer.returncode == 0, writer.stderr
    assert "lost 0 of 40" in writer.stdout, writer.stdout  # data lost: 0
    assert all(p.returncode == 0 for p in readers), [err[-500:] for _, err in outs]
    assert sum(int(out.split()[1]) for out, _ in outs) > 0  # the readers did see complete outputs meanwhile
    assert holds(final) == "w39"


def test_kill_while_writing_a_manifest_in_place(tmp_path: Path) -> None:
    """A cell directory gets its manifest in place (no swap): a kill before the manifest's rename leaves
    it not done; after it, done and verified."""
    for step, done in (("in-body", None), ("data-synced", None), ("manifest-written", "v1")):
        d = tmp_path / step
        run = child("inplace", str(d), step, "v1")
        assert run.returncode == KILLED
        assert holds(d) == done, step


def test_two_writers_of_one_output_at_once(tmp_path: Path) -> None:
    """Two processes replacing the same output over and over (two trials converting one model): every
    swap succeeds and the output is one writer's, whole."""
    import subprocess
    import sys

    from storage_support import CHILD, REPO

    final = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, str(CHILD), "swap-loop", str(final), v, "15"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in ("va", "vb")]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert holds(final) in ("va", "vb")
    assert leftovers(tmp_path) == []


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.parquet").write_text("partial")
        raise RuntimeError("killed mid-stage")
    assert not target.exists()
    assert leftovers(tmp_path) == []  # no temporary directory left behind either


def test_a_failed_replace_keeps_the_old_output(tmp_path: Path) -> None:
    target = tmp_path / "out"
    write_in_process(target, "v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "data.bin").write_bytes(b"new, unfinished")
        raise RuntimeError("the stage failed")
    assert holds(target) == "v1"
    assert leftovers(tmp_path) == []
