"""Manifests record every data file's size and sha256; a missing, truncated or corrupt file makes the
directory read as not done, so the stage is redone rather than fatal; the check itself removes nothing."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from cluster import storage
from cluster.storage import MANIFEST, read_manifest, write_json_atomic, write_manifest


def stage_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cell"
    (d / "generations").mkdir(parents=True)
    for i in range(3):
        (d / "generations" / f"part-{i:05d}.parquet").write_bytes(bytes([i]) * (1000 + i))
    (d / "judged.parquet").write_bytes(b"judged" * 100)
    write_manifest(d, rows=3)
    return d


def test_manifest_records_every_data_file(tmp_path: Path) -> None:
    d = stage_dir(tmp_path)
    (d / ".judged.parquet.123.tmp").write_bytes(b"a killed writer's temp file")  # not data
    write_manifest(d, rows=3)
    files = json.loads((d / MANIFEST).read_text())["files"]
    assert sorted(files) == ["generations/part-00000.parquet", "generations/part-00001.parquet",
                             "generations/part-00002.parquet", "judged.parquet"]
    assert files["generations/part-00002.parquet"]["size"] == 1002
    assert read_manifest(d)["rows"] == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_file_reads_as_not_done_and_nothing_is_removed(tmp_path: Path, damage: str, caplog) -> None:
    d = stage_dir(tmp_path)
    bad = d / "generations" / "part-00001.parquet"
    if damage == "flip":  # same size: only the checksum sees it
        data = bytearray(bad.read_bytes())
        data[500] ^= 0xFF
        bad.write_bytes(bytes(data))
    elif damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:100])
    else:
        bad.unlink()
    before = sorted(p.name for p in d.rglob("*"))
    with caplog.at_level(logging.WARNING, logger="cluster.storage"):
        assert read_manifest(d) is None
    assert "part-00001.parquet" in caplog.text
    # A check only reads (a writer may be replacing the directory that instant): nothing removed, and
    # it stays not done until the stage writes it again.
    assert sorted(p.name for p in d.rglob("*")) == before
    assert read_manifest(d) is None
    # Redone: the stage writes the part again and its manifest, and the directory is done again.
    bad.write_bytes(bytes([1]) * 1001)
    write_manifest(d, rows=3)
    assert read_manifest(d)["rows"] == 3


def test_size_is_checked_even_without_sha256(tmp_path: Path) -> None:
    d = stage_dir(tmp_path)
    (d / "judged.parquet").write_bytes(b"short")
    assert read_manifest(d, verify=False) is None


def test_without_sha256_a_same_size_change_is_not_seen(tmp_path: Path) -> None:
    """verify=False is the cheap check it says it is: sizes only."""
    d = stage_dir(tmp_path)
    (d / "judged.parquet").write_bytes(b"JUDGED" * 100)
    assert read_manifest(d, verify=False) is not None
    assert read_manifest(d) is None


def test_extra_files_do_not_invalidate(tmp_path: Path) -> None:
    d = stage_dir(tmp_path)
    (d / "later.txt").write_text("written after the manifest")
    assert read_manifest(d)["rows"] == 3


def test_a_remembered_checksum_does_not_hide_a_later_change(tmp_path: Path, monkeypatch) -> None:
    """The per-process memo of checksums is keyed by the file's change time: a file changed after it was
    hashed is hashed again."""
    monkeypatch.setattr(storage, "_SETTLED_NS", 0)  # remember files at once (normally: after 2 s)
    d = stage_dir(tmp_path)
    assert read_manifest(d) is not None  # hashed and remembered
    time.sleep(0.05)  # past the filesystem's timestamp tick
    data = bytearray((d / "judged.parquet").read_bytes())
    data[0] ^= 0xFF
    (d / "judged.parquet").write_bytes(bytes(data))
    assert read_manifest(d) is None


def test_a_manifest_without_checksums_is_taken_as_before(tmp_path: Path) -> None:
    """Workdirs written before checksums were recorded are reused, not redone."""
    d = tmp_path / "old"
    d.mkdir()
    (d / "data.parquet").write_bytes(b"x")
    write_json_atomic(d / MANIFEST, {"created_at": "2026-11-01T00:00:00Z", "rows": 1})
    assert read_manifest(d)["rows"] == 1


def test_files_is_a_reserved_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'files' is the manifest's own record"):
        write_manifest(tmp_path, files=["a"])


def test_read_manifest_of_a_missing_directory(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "missing") is None


def test_write_json_atomic_overwrites(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    write_json_atomic(p, {"a": 1})
    write_json_atomic(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_write_parquet_atomic_leaves_only_the_file(tmp_path: Path) -> None:
    import polars as pl

    from cluster.storage import write_parquet_atomic

    write_parquet_atomic(pl.DataFrame({"a": [1, 2]}), tmp_path / "part-00000.parquet")
    assert pl.read_parquet(tmp_path / "part-00000.parquet")["a"].to_list() == [1, 2]
    assert [f.name for f in tmp_path.iterdir()] == ["part-00000.parquet"]
