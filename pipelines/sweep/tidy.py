"""The sweep's tidy table: every cell's metrics plus the deltas of each fine-tuned cell against its base
model, written beside the sweep's manifest and logged to the cells' MLflow runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import write_parquet_atomic
from pipelines.evaluate.measure import TIDY_SCHEMA, Tidy, sweep_deltas
from pipelines.evaluate.stats import is_number
from pipelines.layout import Workdir


def write_sweep_tidy(results: list[dict[str, Any]], wd: Workdir, sweep_dir: Path,
                     tracking_uri: str | None = None) -> pl.DataFrame:
    """The sweep's combined tidy table (every cell's metrics_tidy.parquet plus the delta rows against
    the base model), written to sweep_dir/metrics_tidy.parquet (the report reads it from there); delta
    metrics also logged to each fine-tuned cell's MLflow run."""
    cell_dirs = [(r, wd.cell(r["cell_hash"])) for r in results if r.get("cell_hash")]
    frames = [pl.read_parquet(d / "metrics_tidy.parquet") for _, d in cell_dirs if (d / "metrics_tidy.parquet").exists()]
    tidy = pl.concat(frames) if frames else pl.DataFrame(schema=TIDY_SCHEMA)
    extra, client = [], None
    if tracking_uri:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri)
    per_cell = sweep_deltas(cell_dirs)
    for m, _ in cell_dirs:
        t = Tidy(m["cell"], m["cell_id"])
        metrics: dict[str, float] = {}
        for r in per_cell.get(m["cell_id"], []):
            t.add(r["lang"], r["metric"], r["value"], r["ci_low"], r["ci_high"], r["n"])
            metrics[f"{r['metric']}/{r['lang']}"] = r["value"]
        extra.append(t.frame())
        if client is not None and metrics and m.get("mlflow_run_id"):
            # One request per cell (log_batch), not one per metric: 330 cells × 8 languages × 3 metrics.
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            client.log_batch(m["mlflow_run_id"], metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                          if is_number(v)])
    tidy = pl.concat([tidy, *extra])
    write_parquet_atomic(tidy, sweep_dir / "metrics_tidy.parquet")
    return tidy
