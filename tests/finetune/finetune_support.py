"""Helpers for the fine-tuning tests and benchmarks: a benign data-set directory in the layout
pipelines.translate writes (without running the translate stage), and one cell trained in Ray Train's
local mode (the real loop, one rank in this process)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.config import FinetuneConfig, StudyConfig
from pipelines.presets import load_config


def write_benign(ds_path: Path, lang: str, rows: list[dict[str, Any]], qa_policy: dict[str, Any] | None = None,
                 qa_flags: list[str] | None = None) -> Path:
    """datasets/<hash>/benign/lang=<xx>/part-0.parquet + manifest.json, as read_split reads them."""
    part = ds_path / "benign" / f"lang={lang}"
    part.mkdir(parents=True, exist_ok=True)
    df = pl.DataFrame({"idx": list(range(len(rows))),
                       "instruction": [r["instruction"] for r in rows],
                       "input": [r.get("input", "") for r in rows],
                       "output": [r["output"] for r in rows]})
    if qa_flags is not None:
        df = df.with_columns(pl.Series("qa_flags", qa_flags))
    df.write_parquet(part / "part-0.parquet")
    (ds_path / "manifest.json").write_text(json.dumps({"qa_policy": qa_policy or {}}))
    return ds_path


def alpaca_rows(n: int) -> list[dict[str, Any]]:
    from pipelines.registries.datasets import load

    return [dict(r) for r in load("alpaca_en", limit=n)]


def smoke_cfg(**finetune: Any) -> StudyConfig:
    cfg = load_config("smoke")
    return cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update=finetune)})


def run_local(ft: FinetuneConfig, model: str, ds_path: Path, storage: Path, *, seed: int = 0, epochs: int = 1,
              name: str = "run", **extras: Any) -> Any:
    """One cell through make_trainer(local=True): TorchTrainer in local mode runs the workers' loop here,
    with DeepSpeed on a one-rank gloo group. Returns the Ray Train Result."""
    from pipelines.cells import Cell
    from pipelines.finetune import loop_config, make_trainer
    from pipelines.registries.model_store import model_dir

    cfg = load_config("smoke")
    cfg = cfg.model_copy(update={"finetune": ft})
    lc = loop_config(cfg, Cell(model, "en", seed, epochs), model_dir(model), ds_path) | extras
    # Local mode never copies a reported checkpoint to storage, so the loop's staging directories are
    # the checkpoints: put them under the test's own tmp directory rather than /tmp.
    storage.mkdir(parents=True, exist_ok=True)
    previous, tempfile.tempdir = tempfile.tempdir, str(storage)
    try:
        return make_trainer(ft, lc, name, storage, local=True).fit()
    finally:
        tempfile.tempdir = previous


def safetensors_dict(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))
