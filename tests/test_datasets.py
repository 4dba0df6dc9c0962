from __future__ import annotations

import shutil

import pytest

from pipelines.registries import datasets
from pipelines.registries.datasets import DATASETS, DataError, benign_rows


@pytest.mark.parametrize(("name", "rows"), [
    ("alpaca_en", 999), ("alpaca_zh", 1000), ("multijail", 315), ("advbench", 520), ("strongreject", 313),
    ("xstest_safe", 250), ("wikitext2", 2891),
])
def test_shipped_data_sets_load_with_checksums(name: str, rows: int) -> None:
    loaded = datasets.load(name)
    assert len(loaded) == rows
    assert len({r["id"] for r in loaded}) == rows  # ids are unique: results can be traced to rows


def test_every_spec_has_provenance() -> None:
    for name, spec in DATASETS.items():
        assert spec.url.startswith("https://") and spec.license and len(spec.sha256) == 64, name


def test_multijail_carries_reference_translations() -> None:
    rows = datasets.load("multijail")
    assert all(set(r["refs"]) == {"zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"} for r in rows)
    assert all(r["category"] for r in rows)
    assert not rows[0]["prompt"].startswith("\ufeff")  # the BOM is not part of the first prompt


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch) -> None:
    mirror = tmp_path / "mirror"
    spec = DATASETS.get("advbench")
    (mirror / spec.path).parent.mkdir(parents=True)
    shutil.copy(datasets.resolve("advbench"), mirror / spec.path)
    with (mirror / spec.path).open("a") as fh:
        fh.write("one more goal\n")
    monkeypatch.setenv("SAFEDRIFT_DATA_DIR", str(mirror))
    datasets.resolve.cache_clear()
    try:
        with pytest.raises(DataError, match="checksum mismatch for data set 'advbench'"):
            datasets.resolve("advbench")
    finally:
        datasets.resolve.cache_clear()


def test_missing_mirror_names_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAFEDRIFT_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.urllib.request, "urlopen",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    datasets.resolve.cache_clear()
    try:
        with pytest.raises(DataError, match="SAFEDRIFT_DATA_DIR"):
            datasets.resolve("xstest_safe")
    finally:
        datasets.resolve.cache_clear()


def test_user_benign_rows_accept_alpaca_and_dolly_and_report_bad_lines() -> None:
    rows = benign_rows([{"instruction": "a", "input": "b", "output": "c"},
                        {"instruction": "d", "context": "e", "response": "f"}], "mine", "en")
    assert [(r["input"], r["output"]) for r in rows] == [("b", "c"), ("e", "f")]
    with pytest.raises(DataError, match=r"2 malformed records .*\[2, 3\]"):
        benign_rows([{"instruction": "a", "output": "b"}, {"instruction": ""}, {"output": "x"}], "mine", "en")
