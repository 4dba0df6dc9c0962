"""transformers batched generation (CPU by default, a GPU where torch sees one): left padding, the model's
chat template, greedy unless generate.temperature > 0. The worker's one copy of the base model answers for
every cell, the cell's LoRA adapter switched in by peft (unmerged: an r-8 adapter adds a few per cent to a
forward pass, against a model load per cell)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines.config import GenerateConfig
from pipelines.evaluate.backends.base import Backend
from pipelines.evaluate.weights import LoadedModel, load_tokenizer
from pipelines.registries.chat import batch_encoding


class TransformersBackend(Backend):
    """transformers generate() on CPU (or whatever torch finds), batches of similar prompt length."""

    def __init__(self, model: LoadedModel, gcfg: GenerateConfig, sort_by_length: bool = True) -> None:
        super().__init__(model, gcfg)
        # False keeps the prompt order in the batches (the batching benchmark's baseline).
        self.sort_by_length = sort_by_length
        self.tok = model.tok

    def batches(self, prompts: list[str]) -> list[list[int]]:
        if not self.sort_by_length:
            bs = self.gcfg.batch_size
            return [list(range(i, min(i + bs, len(prompts)))) for i in range(0, len(prompts), bs)]
        return length_batches(prompt_lengths(self.tok, prompts), self.gcfg.batch_size)

    def answer(self, prompts: list[str]) -> list[str]:
        return generate_answers(self.model.activate(self.adapter), self.tok, prompts, self.gcfg)


def load_for_generation(model_dir: Path, adapter_dir: Path | None, threads: int | None = None) -> tuple[Any, Any]:
    """A model on its own, outside an evaluation worker (a judge's LM, the aligned base's recipe), with a
    LoRA adapter merged in."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads or os.cpu_count() or 1)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        # Merging the LoRA weights makes each forward pass as cheap as the base model's.
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), tok


def generate_answers(model: Any, tok: Any, prompts: list[str], gcfg: GenerateConfig) -> list[str]:
    import torch

    # The ids chat.py builds for every backend (thinking off where the template has the switch).
    enc = batch_encoding(tok, prompts).to(model.device)
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
