"""The sweep's head reads the judged answers' label columns only: with every answer text in the cells'
judged.parquet made unreadable, the sweep's tidy table (its deltas against the base model) and the report
still build, with the same numbers as from intact files. A driver that read the texts (a whole-file read,
a select of more columns) fails here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipelines.evaluate.measure import (
    LABEL_COLUMNS,
    Tidy,
    add_safety_rows,
    compliance_by_lang,
)
from pipelines.layout import Workdir
from pipelines.report import write_report
from pipelines.sweep.tidy import write_sweep_tidy

TEXTS = ["prompt", "response", "response_en", "prompt_judge"]
LANGS = ["en", "es", "zh"]
CELLS = [("base", 0, 0), ("en", 0, 1), ("en", 1, 1), ("es", 0, 1)]


def _cell_id(ft: str, seed: int, epochs: int) -> str:
    return "m1__base" if ft == "base" else f"m1__{ft}__s{seed}__e{epochs}"


def _judged(rng: np.random.Generator, rate: float, n: int = 40) -> pl.DataFrame:
    ids = [f"multijail/{i}" for i in range(n)] * len(LANGS)
    langs = [lang for lang in LANGS for _ in range(n)]
    labels = (rng.random(len(ids)) < rate).astype(np.int8)
    text = [("answer " * int(k)).strip() for k in rng.integers(20, 60, len(ids))]
    return pl.DataFrame({
        "id": ids, "lang": langs, "category": ["Fraud & deception"] * len(ids),
        "prompt": [f"prompt {i}" for i in range(len(ids))], "response": text, "response_en": text,
        "prompt_judge": [f"prompt {i}" for i in range(len(ids))],
        "back_translated": [lang != "en" for lang in langs], "label": pl.Series(labels, dtype=pl.Int8),
        "score": rng.random(len(ids)), "judge": ["refusal-phrase"] * len(ids)})


def _corrupt_columns(path: Path, names: list[str]) -> None:
    """Overwrites the bytes of these columns' chunks (pages and page headers) in place: reading them fails,
    reading the other columns does not (the footer still describes the file)."""
    meta = pq.ParquetFile(path).metadata
    spans = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            if col.path_in_schema in names:
                start = min(x for x in (col.dictionary_page_offset, col.data_page_offset) if x is not None and x > 0)
                spans.append((start, col.total_compressed_size))
    assert len(spans) >= len(names)
    with open(path, "r+b") as fh:
        for start, size in spans:
            fh.seek(start)
            fh.write(b"\xfe" * size)


def _workdir(root: Path, corrupt: bool) -> tuple[Workdir, list[dict]]:
    rng = np.random.default_rng(0)
    wd = Workdir.open(root)
    results = []
    for i, (ft, seed, epochs) in enumerate(CELLS):
        cid = _cell_id(ft, seed, epochs)
        cell = {"model": "m1", "ft_lang": ft, "seed": seed, "epochs": epochs}
        d = wd.cell(f"hash{i:02d}")
        d.mkdir(parents=True)
        judged = _judged(rng, 0.1 if ft == "base" else 0.4)
        judged.write_parquet(d / "judged.parquet")
        tidy = Tidy(cell, cid)
        add_safety_rows(tidy, compliance_by_lang(judged), [], [], [], {})
        tidy.frame().write_parquet(d / "metrics_tidy.parquet")
        if corrupt:
            _corrupt_columns(d / "judged.parquet", TEXTS)
        results.append({"cell": cell, "cell_id": cid, "cell_hash": d.name})
    return wd, results


def _context() -> dict:
    return {"preset": "test", "study_hash": "labels000000", "eval_langs": LANGS, "ft_langs": ["en", "es"],
            "seeds": [0, 1], "epochs": [1],
            "expected_cells": [{"cell": _cell_id(*c), "model": "m1", "ft_lang": c[0], "seed": c[1], "epochs": c[2]}
                               for c in CELLS],
            "models": [{"alias": "m1", "source": "tiny"}], "judge": {"name": "refusal-phrase"}}


def test_corrupt_columns_fail_a_whole_read(tmp_path):
    """The corruption this test relies on is real: a whole-file read of a cell's answers fails."""
    wd, _ = _workdir(tmp_path / "wd", corrupt=True)
    path = wd.cell("hash00") / "judged.parquet"
    assert pl.read_parquet(path, columns=LABEL_COLUMNS).height == 40 * len(LANGS)
    with pytest.raises(Exception):  # noqa: B017 - polars' error for a broken page varies by version
        pl.read_parquet(path)
    with pytest.raises(Exception):  # noqa: B017
        pl.read_parquet(path, columns=["id", "response"])


def test_sweep_tidy_and_report_never_read_the_answer_texts(tmp_path):
    intact_wd, results = _workdir(tmp_path / "intact", corrupt=False)
    broken_wd, _ = _workdir(tmp_path / "broken", corrupt=True)
    intact = write_sweep_tidy(results, intact_wd, tmp_path / "sweep_intact")
    broken = write_sweep_tidy(results, broken_wd, tmp_path / "sweep_broken")
    deltas = broken.filter(pl.col("metric").str.starts_with("delta/"))
    # 3 fine-tuned cells × 3 eval languages × (delta, exact p-value), and the pooled test for the two en seeds.
    assert deltas.filter(pl.col("metric") == "delta/compliance_rate").height == 9
    assert deltas.filter(pl.col("metric") == "delta/compliance_rate/p_value").height == 9
    assert deltas.filter(pl.col("metric") == "delta/compliance_rate/p_value_seeds").height == 6
    # The difference of changes against English, per non-English language and outside English, per seed.
    assert broken.filter(pl.col("metric") == "contrast/vs_en/p_value").height == 3 * 3
    assert broken.sort(["cell", "eval_lang", "metric"]).equals(intact.sort(["cell", "eval_lang", "metric"]))
    manifest = write_report(broken, _context(), tmp_path / "report")
    assert manifest["missing_cells"] == []
    assert "deltas.csv" in manifest["tables"]
    shutil.rmtree(tmp_path / "broken")  # the report directory alone holds the report
    assert (tmp_path / "report" / "report.html").stat().st_size > 0
