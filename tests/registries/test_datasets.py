from __future__ import annotations

import hashlib
import shutil

import pytest

from pipelines.registries import datasets
from pipelines.registries.datasets import DATASETS, DataError, benign_rows


@pytest.mark.parametrize(("name", "rows"), [
    ("alpaca_en", 999), ("alpaca_zh", 1000), ("multijail", 315), ("advbench", 520), ("strongreject", 313),
    ("xstest_safe", 250), ("wikitext2", 2891), ("mt_bench", 80),
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


def test_harmful_and_overrefusal_sources_keep_ids_and_categories() -> None:
    hb = datasets.load("harmbench")
    assert len(hb) > 100 and all(r["id"].startswith("harmbench/") and r["category"] for r in hb)
    oasst = datasets.load("hplt_oasst")
    assert len(oasst) == 50 and all(r["id"].startswith("oasst/") for r in oasst)
    # test_hi.jsonl line 50 is malformed upstream: reported with its line number, not a crash.
    assert {"file": "test_hi.jsonl", "line": 50} in [{k: b[k] for k in ("file", "line")} for b in oasst.malformed]
    assert sum("hi" in r["refs"] for r in oasst) == 49 and sum("es" in r["refs"] for r in oasst) == 50


def _write_sorrybench(path, n_per_cat: int = 2) -> None:
    import json

    lines = []
    for cat in range(1, 45):
        for k in range(n_per_cat):
            qid = (cat - 1) * n_per_cat + k + 1
            lines.append(json.dumps({"question_id": qid, "category": str(cat), "turns": [f"placeholder {qid}"],
                                     "prompt_style": "base"}))
    lines.append(json.dumps({"question_id": 999, "category": "3", "turns": ["x"], "prompt_style": "ascii"}))
    lines.append("{broken json")
    lines.append(json.dumps({"question_id": 1000, "category": "45", "turns": ["y"]}))
    path.write_text("\n".join(lines) + "\n")


def test_sorrybench_from_a_user_file(tmp_path) -> None:
    from pipelines.registries.datasets import SORRYBENCH_CATEGORIES

    assert len(SORRYBENCH_CATEGORIES) == 44 == len(set(SORRYBENCH_CATEGORIES))
    f = tmp_path / "question.jsonl"
    _write_sorrybench(f)
    rows = datasets.load(f"sorrybench:{f}")
    assert len(rows) == 88  # 44 categories × 2 base prompts; the ascii mutation is left out
    assert rows[0]["id"] == "sorrybench/1" and rows[0]["category"] == "Personal Insulting Words"
    assert rows[-1]["category"] == "Dangerous Machinery Operation Advice"
    assert [(b["line"], b["reason"][:12]) for b in rows.malformed] == [(90, "invalid JSON"), (91, "unknown SORR")]
    assert datasets.sha256_of(f"sorrybench:{f}") == hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="does not exist"):
        datasets.load(f"sorrybench:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(DataError, match=r"sorrybench:/path/to/question.jsonl"):
        datasets.load("sorrybench")


def test_user_benign_file_jsonl_json_parquet(tmp_path) -> None:
    import json

    import polars as pl

    recs = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "context": "e", "response": "f"}]
    jl = tmp_path / "mine.jsonl"
    jl.write_text(json.dumps(recs[0]) + "\n{not json\n" + json.dumps({"instruction": ""}) + "\n" +
                  json.dumps(recs[1]) + "\n")
    rows = datasets.load(f"file:{jl}")
    assert [(r["id"], r["input"], r["output"]) for r in rows] == [("user:mine/1", "b", "c"), ("user:mine/4", "e", "f")]
    assert [b["line"] for b in rows.malformed] == [2, 3]
    (tmp_path / "mine.json").write_text(json.dumps(recs))
    assert len(datasets.load(f"file:{tmp_path / 'mine.json'}")) == 2
    pl.DataFrame([recs[0]]).write_parquet(tmp_path / "mine.parquet")
    assert datasets.load(f"file:{tmp_path / 'mine.parquet'}", limit=1)[0]["output"] == "c"
    with pytest.raises(DataError, match="unsupported data file type"):
        (tmp_path / "mine.csv").write_text("x")
        datasets.load(f"file:{tmp_path / 'mine.csv'}")
