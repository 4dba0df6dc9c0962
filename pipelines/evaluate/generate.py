"""Stage 3, generate: a cell answers the eval prompts in every eval language. transformers batched
generation on CPU (left padding, the model's chat template, greedy by default), or vLLM on GPU
(`generate.backend: vllm`): one engine per base model per process, every fine-tuned cell's LoRA adapter
served by it through a LoRARequest. Answers are written in parts as they come, keyed by (prompt id, eval
language), so an interrupted generation resumes."""

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
        torch.manual_seed(gcfg.seed)  # sampled answers are reproducible per config
        kwargs.update(do_sample=True, temperature=gcfg.temperature, top_p=gcfg.top_p)
    else:
        kwargs.update(do_sample=False)
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def prompt_lengths(tok: Any, prompts: list[str]) -> list[int]:
    """Tokens per prompt, without the chat template (the same few tokens for every prompt)."""
    return [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped for batched generation: as few batches as batch_size allows, of near-equal
    size, each holding prompts of similar length (longest first, so a batch that does not fit in memory
    fails at once). In a left-padded batch every prompt is computed at the longest one's length, in the
    prefill and in each decoding step's attention; the eval suite mixes short English prompts with long
    Chinese ones (SmolLM2's tokenizer spends nearly two tokens per Han character), and equal sizes spare
    the nearly empty last batch that a plain slicing leaves."""
    n = len(lengths)
    if n == 0:
        return []
    k = -(-n // batch_size)
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    base, extra = divmod(n, k)
    batches, pos = [], 0
    for b in range(k):
        size = base + (b < extra)
        batches.append(order[pos:pos + size])
        pos += size
    return batches


def generate_cell(model_dir: Path, adapter_dir: Path | None, prompts: pl.DataFrame, gcfg: GenerateConfig,
                  out: Path, desc: str = "generate", sort_by_length: bool = True) -> pl.DataFrame:
    """prompts: columns id, lang, prompt (+ anything else, carried through). Writes out/part-*.parquet
    per batch and returns all answers in prompt order. sort_by_length=False keeps the prompt order in
    the batches (the benchmark's baseline)."""
    out.mkdir(parents=True, exist_ok=True)
    done = _read_parts(out)
    # Prompts not answered yet: an anti-join on the (id, lang) key, in prompt order.
    todo = prompts.join(done.select("id", "lang"), on=["id", "lang"], how="anti", maintain_order="left") \
        if done.height else prompts
    if todo.height and gcfg.backend == "vllm":
        start = len(list(out.glob("part-*.parquet")))
        answers = generate_vllm(model_dir, adapter_dir, todo["prompt"].to_list(), gcfg)
        write_parquet_atomic(todo.with_columns(pl.Series("response", answers, dtype=pl.String)),
                             out / f"part-{start:05d}.parquet")
    elif todo.height:
        model, tok = load_for_generation(model_dir, adapter_dir, gcfg.threads)
        start = len(list(out.glob("part-*.parquet")))
        bar = tqdm(total=prompts.height, initial=prompts.height - todo.height, desc=desc, unit="answer")
        if sort_by_length:
            lengths = prompt_lengths(tok, todo["prompt"].to_list())
            batches = [todo[idx, :] for idx in length_batches(lengths, gcfg.batch_size)]
        else:
            batches = list(todo.iter_slices(gcfg.batch_size))
        for b, batch in enumerate(batches):
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


# ---- vLLM (GPU) ------------------------------------------------------------------------------------

class VllmMissingError(ImportError):
    pass


def require_vllm() -> Any:
    """vLLM, imported lazily: it has no CPU wheel and pins its own torch (FIELD-NOTES), so it lives in
    the `gpu` extra and only GPU images have it."""
    try:
        import vllm
    except ImportError as exc:
        raise VllmMissingError(
            "generate.backend=vllm needs vLLM, which is not installed here: install the GPU extra "
            "(`pip install -e '.[gpu]'`, on a CUDA machine) or set generate.backend=transformers"
        ) from exc
    return vllm


def chat_prompts(tok: Any, prompts: list[str]) -> list[str]:
    """The model's chat template around each prompt, as text: vLLM is handed exactly what the
    transformers path tokenises."""
    return [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def sampling_kwargs(gcfg: GenerateConfig) -> dict[str, Any]:
    """vllm.SamplingParams arguments matching the transformers path (greedy when temperature is 0)."""
    kw: dict[str, Any] = {"max_tokens": gcfg.max_new_tokens, "temperature": gcfg.temperature, "seed": gcfg.seed}
    if gcfg.temperature > 0:
        kw["top_p"] = gcfg.top_p
    return kw


def lora_request_args(adapter_dirs: list[Path | None]) -> list[tuple[str, int, str] | None]:
    """(name, int id, path) per prompt for vllm.lora.request.LoRARequest: one id per distinct adapter,
    starting at 1 (vLLM reserves 0), None for the base model."""
    ids: dict[str, int] = {}
    out: list[tuple[str, int, str] | None] = []
    for a in adapter_dirs:
        if a is None:
            out.append(None)
            continue
        key = str(Path(a).resolve())
        ids.setdefault(key, len(ids) + 1)
        out.append((f"adapter-{ids[key]}", ids[key], key))
    return out


def adapter_rank(adapter_dirs: list[Path | None]) -> int:
    import json

    ranks = [json.loads((Path(a) / "adapter_config.json").read_text()).get("r", 8) for a in adapter_dirs if a]
    return max([8, *ranks])


_ENGINES: dict[str, Any] = {}


def vllm_engine(model_dir: Path, max_lora_rank: int = 64, max_loras: int = 4, **engine_kwargs: Any) -> Any:
    """One engine per base model in this process, LoRA enabled, reused by every cell of that model."""
    vllm = require_vllm()
    key = str(Path(model_dir).resolve())
    if key not in _ENGINES:
        _ENGINES[key] = vllm.LLM(model=key, enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras,
                                 **engine_kwargs)
    return _ENGINES[key]


def generate_vllm_many(model_dir: Path, jobs: list[tuple[Path | None, list[str]]], gcfg: GenerateConfig,
                       **engine_kwargs: Any) -> list[list[str]]:
    """Answers for several (adapter or None, prompts) jobs of one base model in one engine call: the
    engine batches across adapters (multi-LoRA), which is why one engine serves every language."""
    vllm = require_vllm()
    from vllm.lora.request import LoRARequest

    adapters = [a for a, ps in jobs for _ in ps]
    llm = vllm_engine(model_dir, max_lora_rank=max(64, adapter_rank(adapters)), **engine_kwargs)
    texts = chat_prompts(llm.get_tokenizer(), [p for _, ps in jobs for p in ps])
    loras = [LoRARequest(*a) if a else None for a in lora_request_args(adapters)]
    outs = llm.generate(texts, vllm.SamplingParams(**sampling_kwargs(gcfg)),
                        lora_request=loras if any(loras) else None)
    flat = [o.outputs[0].text for o in outs]
    res, i = [], 0
    for _, ps in jobs:
        res.append(flat[i:i + len(ps)])
        i += len(ps)
    return res


def generate_vllm(model_dir: Path, adapter_dir: Path | None, prompts: list[str], gcfg: GenerateConfig) -> list[str]:
    return generate_vllm_many(model_dir, [(adapter_dir, prompts)], gcfg)[0]
