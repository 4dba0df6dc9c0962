from __future__ import annotations

import polars as pl

from pipelines.config import GenerateConfig
from pipelines.generate import generate_cell
from pipelines.model_store import model_dir


def _prompts(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"p/{i}" for i in range(n)], "lang": ["en"] * n,
                         "prompt": [f"Tell me about number {i}." for i in range(n)]})


def test_generation_resumes_where_it_stopped(tmp_path) -> None:
    gcfg = GenerateConfig(max_new_tokens=4, batch_size=3, threads=1)
    out = tmp_path / "gen"
    first = generate_cell(model_dir("tiny-llama"), None, _prompts(3), gcfg, out)
    assert first.height == 3 and len(list(out.glob("part-*.parquet"))) == 1
    mtime = next(out.glob("part-*.parquet")).stat().st_mtime_ns
    # Three more prompts: only they are generated; the first part is not rewritten.
    full = generate_cell(model_dir("tiny-llama"), None, _prompts(6), gcfg, out)
    assert full["id"].to_list() == [f"p/{i}" for i in range(6)]
    assert full["response"].null_count() == 0
    assert len(list(out.glob("part-*.parquet"))) == 2
    assert next(iter(sorted(out.glob("part-*.parquet")))).stat().st_mtime_ns == mtime
    assert full.head(3)["response"].to_list() == first["response"].to_list()  # greedy: deterministic
