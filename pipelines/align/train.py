"""Plain peft in one process (no Ray, no DeepSpeed: a one-time preparation step): a seeded LoRA trained on
the recipe's rows for recipe.steps AdamW steps, then merged into the weights."""

from __future__ import annotations

import time
from typing import Any

from pipelines.align.recipe import AlignRecipe
from pipelines.finetune.data import FORWARD_KWARGS, collate, format_example


def examples(tok: Any, rows: list[dict[str, Any]], max_length: int) -> list[dict[str, list[int]]]:
    return [e for e in (format_example(tok, r, max_length) for r in rows) if e is not None]


def train_lora(model: Any, tok: Any, rows: list[dict[str, Any]], recipe: AlignRecipe) -> dict[str, Any]:
    """recipe.steps AdamW steps of recipe.batch_size examples (cycling through the shuffled rows), then
    merged into the weights. Returns the merged model and the training figures."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(recipe.seed)
    targets = [t for t in recipe.targets if any(n.endswith(t) for n, _ in model.named_modules())]
    peft_model = get_peft_model(model, LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                                                  lora_dropout=recipe.lora_dropout, target_modules=targets,
                                                  task_type="CAUSAL_LM"))
    exs = examples(tok, rows, recipe.max_length)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=recipe.lr)
    peft_model.train()
    losses: list[float] = []
    t0 = time.time()
    for step in range(recipe.steps):
        lo = step * recipe.batch_size % len(exs)
        batch = [exs[(lo + i) % len(exs)] for i in range(recipe.batch_size)]
        loss = peft_model(**collate(batch, tok.pad_token_id), **FORWARD_KWARGS).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.time() - t0
    merged = peft_model.merge_and_unload()
    return {"model": merged.eval(), "steps": recipe.steps, "examples": len(exs), "targets": targets,
            "loss_first": losses[0], "loss_last": losses[-1],
            "loss_last5_mean": sum(losses[-5:]) / len(losses[-5:]), "train_s": round(seconds, 1)}
