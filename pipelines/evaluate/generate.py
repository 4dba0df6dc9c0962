"""Generate: a cell answers the eval prompts in every eval language with the configured backend
(pipelines/evaluate/backends: transformers on CPU, vLLM on GPU). Answers are written in parts as they
come, keyed by (prompt id, eval language), so an interrupted generation resumes."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from cluster import progress
from cluster.storage import write_parquet_atomic
from pipelines.config import GenerateConfig
from pipelines.evaluate.session import EvalSession

log = logging.getLogger(__name__)


def generate_cell(model_dir: Path, adapter_dir: Path | None, prompts: pl.DataFrame, gcfg: GenerateConfig,
                  out: Path, desc: str = "generate", stage: str = "generate",
                  session: EvalSession | None = None) -> pl.DataFrame:
    """prompts: columns id, lang, prompt (+ anything else, carried through). Writes out/part-*.parquet
    per backend batch and returns all answers in prompt order. The backend (and its model) is loaded
    only when some prompt is still unanswered, from `session` (the evaluation worker's shared copy) or,
    without one, for this call alone."""
    out.mkdir(parents=True, exist_ok=True)
    done = _read_parts(out)
    # Prompts not answered yet: an anti-join on the (id, lang) key, in prompt order.
    todo = prompts.join(done.select("id", "lang"), on=["id", "lang"], how="anti", maintain_order="left") \
        if done.height else prompts
    if todo.height:
        own = session is None
        session = session or EvalSession(gcfg.threads)
        backend = session.backend(model_dir, gcfg)
        backend.use(adapter_dir)
        start = _next_part(out)
        bar = tqdm(total=prompts.height, initial=prompts.height - todo.height, desc=desc, unit="answer")
        for b, idx in enumerate(backend.batches(todo["prompt"].to_list())):
            batch = todo[idx, :]
            answers = backend.answer(batch["prompt"].to_list())
            part = batch.with_columns(pl.Series("response", answers, dtype=pl.String))
            write_parquet_atomic(part, out / f"part-{start + b:05d}.parquet")
            bar.update(batch.height)
            progress.update(stage, bar.n, prompts.height)
        bar.close()
        if own:
            session.close()
    answers = _read_parts(out)
    order = prompts.select("id", "lang").with_row_index("_order")
    return order.join(answers, on=["id", "lang"], how="left").sort("_order").drop("_order")


def _next_part(out: Path) -> int:
    """The index after the highest existing part: a part removed as corrupt leaves a gap that a count
    would fill by overwriting a good part."""
    return max((int(p.stem.split("-")[1]) for p in out.glob("part-*.parquet")), default=-1) + 1


def _read_parts(out: Path) -> pl.DataFrame:
    parts = sorted(out.glob("part-*.parquet"))
    if not parts:
        return pl.DataFrame({"id": [], "lang": []}, schema={"id": pl.String, "lang": pl.String})
    return pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
