from __future__ import annotations

import pytest

from cluster.storage import atomic_dir, read_manifest, write_json_atomic, write_manifest


def test_atomic_dir_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.parquet").write_text("partial")
        raise RuntimeError("killed mid-stage")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind either


def test_atomic_dir_replaces_and_manifest_marks_done(tmp_path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "data.txt").write_text("1")
        write_manifest(tmp, rows=1)
    assert (target / "data.txt").read_text() == "1"
    assert read_manifest(target)["rows"] == 1
    assert read_manifest(tmp_path / "missing") is None


def test_write_json_atomic_overwrites(tmp_path) -> None:
    p = tmp_path / "x.json"
    write_json_atomic(p, {"a": 1})
    write_json_atomic(p, {"a": 2})
    assert p.read_text().strip().endswith("}") and '"a": 2' in p.read_text()
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]
