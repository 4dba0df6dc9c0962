"""Stage 3, generate: a cell answers the eval prompts in every eval language. transformers batched
generation on CPU (left padding, the model's chat template, greedy by default). Answers are written in
parts as they come, keyed by (prompt id, eval language), so an interrupted generation resumes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from cluster.storage import write_parquet_atomic
from pipelines.config import GenerateConfig

log = logging.getLogger(__name__)


def load_for_generation(model_dir: Path, adapter_dir: Path | None, threads: int | None = None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads or os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"  # decoder-only batches must be left-padded for generation
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        # Merging the LoRA weights makes each forward pass as cheap as the base model's.
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), tok


def generate_answers(model: Any, tok: Any, prompts: list[str], gcfg: GenerateConfig) -> list[str]:
    import torch

    messages = [[{"role": "user", "content": p}] for p in prompts]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", padding=True,
                                  return_dict=True)
    kwargs: dict[str, Any] = {"max_new_tokens": gcfg.max_new_tokens, "pad_token_id": tok.pad_token_id}
    if gcfg.temperature > 0:
        kwargs.update(do_sample=True, temperature=gcfg.temperature)
    else:
        kwargs.update(do_sample=False)
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def generate_cell(model_dir: Path, adapter_dir: Path | None, prompts: pl.DataFrame, gcfg: GenerateConfig,
                  out: Path, desc: str = "generate") -> pl.DataFrame:
    """prompts: columns id, lang, prompt (+ anything else, carried through). Writes out/part-*.parquet
    per batch and returns all answers in prompt order."""
    out.mkdir(parents=True, exist_ok=True)
    done = _read_parts(out)
    done_keys = set(zip(done["id"], done["lang"], strict=True)) if done.height else set()
    todo = prompts.filter(~pl.struct("id", "lang").map_elements(
        lambda s: (s["id"], s["lang"]) in done_keys, return_dtype=pl.Boolean)) if done_keys else prompts
    if todo.height:
        model, tok = load_for_generation(model_dir, adapter_dir, gcfg.threads)
        start = len(list(out.glob("part-*.parquet")))
        bar = tqdm(total=prompts.height, initial=prompts.height - todo.height, desc=desc, unit="answer")
        for b, batch in enumerate(todo.iter_slices(gcfg.batch_size)):
            answers = generate_answers(model, tok, batch["prompt"].to_list(), gcfg)
            part = batch.with_columns(pl.Series("response", answers, dtype=pl.String))
            write_parquet_atomic(part, out / f"part-{start + b:05d}.parquet")
            bar.update(batch.height)
        bar.close()
    answers = _read_parts(out)
    order = prompts.select("id", "lang").with_row_index("_order")
    return order.join(answers, on=["id", "lang"], how="left").sort("_order").drop("_order")


def _read_parts(out: Path) -> pl.DataFrame:
    parts = sorted(out.glob("part-*.parquet"))
    if not parts:
        return pl.DataFrame({"id": [], "lang": []}, schema={"id": pl.String, "lang": pl.String})
    return pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
