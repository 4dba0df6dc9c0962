"""Fine-tuning examples: each benign pair formatted with the model's own chat template, loss on the
response tokens only; batches padded to their longest example, or examples packed up to max_length
(finetune.packing). Also the step plan every rank must agree on."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import FinetuneConfig
from pipelines.errors import FinetuneError
from pipelines.registries.chat import chat_template_kwargs

IGNORE = -100  # label value the loss skips (transformers' CrossEntropy ignore_index)

Example = dict[str, list[int]]

# Every training forward pass: no KV cache. Besides saving memory, transformers only turns packed
# position ids into a per-example (block-diagonal) mask when no cache is passed: with the default cache
# a packed example would attend to its neighbours.
FORWARD_KWARGS: dict[str, Any] = {"use_cache": False}


def format_example(tok: Any, row: dict[str, Any], max_length: int) -> Example | None:
    """The model's own chat template; loss only on the response tokens."""
    user = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
    prompt = [{"role": "user", "content": user}]
    # Thinking off, as in generation (pipelines/registries/chat.py): a Qwen3 prompt then ends with the
    # empty <think></think> block, so it is context (no loss) in training and in generation alike.
    kw = chat_template_kwargs(tok)
    prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False,
                                         **kw)
    full_ids = tok.apply_chat_template([*prompt, {"role": "assistant", "content": row["output"]}],
                                       tokenize=True, return_dict=False, **kw)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # Templates that rewrite earlier turns break the prefix property; fall back to concatenation.
        full_ids = prompt_ids + tok(row["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    full_ids = full_ids[:max_length]
    labels = [IGNORE] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids):]
    if all(x == IGNORE for x in labels):
        return None  # the prompt alone fills max_length: nothing to learn from
    return {"input_ids": full_ids, "labels": labels}


def pack_examples(examples: list[Example], max_length: int) -> list[Example]:
    """Greedy, in order: consecutive examples share a sequence while they fit in max_length. Each keeps
    its own labels (prompt tokens IGNORE) and its own position ids starting at 0; transformers turns
    position-id resets into a block-diagonal causal mask when no attention_mask is given, so an example
    never attends to its neighbour. No loss crosses a boundary: the token after one example's last is
    the next example's first prompt token, whose label is IGNORE."""
    packed: list[Example] = []
    cur: Example = {"input_ids": [], "labels": [], "position_ids": []}
    for e in examples:
        n = len(e["input_ids"])
        if cur["input_ids"] and len(cur["input_ids"]) + n > max_length:
            packed.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += e["input_ids"]
        cur["labels"] += e["labels"]
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        packed.append(cur)
    return packed


def build_sequences(tok: Any, rows: list[dict[str, Any]], ft: FinetuneConfig) -> list[Example]:
    examples = [e for e in (format_example(tok, r, ft.max_length) for r in rows) if e is not None]
    return pack_examples(examples, ft.max_length) if ft.packing else examples


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded batch. Packed sequences (they carry position_ids) get no attention_mask: their
    padding tail is one more segment (positions from 0, labels IGNORE) that no real token attends to."""
    import torch

    packed = "position_ids" in examples[0]
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    pos = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
        if packed:
            pos[i, :n] = torch.tensor(e["position_ids"])
            pos[i, n:] = torch.arange(width - n)
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": pos}
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def real_tokens(examples: list[Example]) -> int:
    return sum(len(e["input_ids"]) for e in examples)


@dataclass(frozen=True)
class StepPlan:
    """Micro-batches run as one stream over the epochs; every grad_accum of them is one optimizer step.
    Every rank gets the same number of sequences, so every rank takes the same number of steps."""

    per_rank: int
    micro_per_epoch: int
    optimizer_steps: int
    grad_accum: int

    @property
    def micro_steps(self) -> int:
        return self.optimizer_steps * self.grad_accum


def plan_steps(n_sequences: int, world: int, ft: FinetuneConfig, epochs: int) -> StepPlan:
    per_rank = n_sequences // world
    if per_rank == 0:
        raise FinetuneError(
            f"{n_sequences} training sequence(s) cannot feed {world} workers: increase data.benign.n, "
            f"lower finetune.num_workers{' or turn off finetune.packing' if ft.packing else ''}")
    micro_per_epoch = math.ceil(per_rank / ft.batch_size)
    steps = micro_per_epoch * epochs // ft.grad_accum
    if steps == 0:
        raise FinetuneError(
            f"{micro_per_epoch * epochs} micro-batch(es) per worker make no optimizer step with "
            f"finetune.grad_accum={ft.grad_accum}: lower finetune.grad_accum or batch_size, or increase "
            "data.benign.n or the epochs")
    return StepPlan(per_rank, micro_per_epoch, steps, ft.grad_accum)


def micro_batch(shard: list[Example], plan: StepPlan, batch_size: int, seed: int, micro: int) -> list[Example]:
    """The micro-th micro-batch of this rank's stream: a function of (seed, index) only, so a resumed
    run continues with exactly the batches the interrupted one would have taken."""
    epoch, b = divmod(micro, plan.micro_per_epoch)
    order = list(range(len(shard)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [shard[i] for i in order[b * batch_size:(b + 1) * batch_size]]


def load_tokenizer(model_dir: str | Path) -> Any:
    """The model's tokenizer, with the EOS token as padding when it has no pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
