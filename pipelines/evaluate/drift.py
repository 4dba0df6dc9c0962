"""Representational drift: per layer, the mean last-token hidden state of the eval prompts (chat
formatted) in the fine-tuned model against the base model — the L2 norm of the change, the cosine
between the two means, and the change projected on the base model's refusal direction (difference of
the mean activations on harmful and harmless prompts, unit length), whose sign says whether the
fine-tune moved the model towards (+) or away from (−) the refusal side."""

from __future__ import annotations

from typing import Any

import numpy as np


def last_token_means(model: Any, tok: Any, prompts: list[str], batch_size: int = 8) -> np.ndarray:
    """[layers + 1, hidden] mean over prompts of the hidden state at the last prompt token (index 0 is
    the embedding output). Left padding puts the last real token at position −1 in every row."""
    import torch

    tok.padding_side = "left"
    total: np.ndarray | None = None
    for i in range(0, len(prompts), batch_size):
        msgs = [[{"role": "user", "content": p}] for p in prompts[i:i + batch_size]]
        enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", padding=True,
                                      return_dict=True).to(model.device)
        with torch.inference_mode():
            hs = model(**enc, output_hidden_states=True).hidden_states
        s = torch.stack([h[:, -1, :].float() for h in hs]).sum(dim=1).cpu().numpy()  # [L+1, d]
        total = s if total is None else total + s
    assert total is not None, "no prompts"
    return total / len(prompts)


def refusal_direction(model: Any, tok: Any, harmful: list[str], harmless: list[str]) -> np.ndarray:
    """[layers + 1, hidden] unit vectors: mean(harmful) − mean(harmless) per layer."""
    d = last_token_means(model, tok, harmful) - last_token_means(model, tok, harmless)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def drift_metrics(base_means: np.ndarray, ft_means: np.ndarray, direction: np.ndarray) -> dict[str, float]:
    """drift/l2/layer_<k>, drift/cos/layer_<k>, drift/refusal_proj/layer_<k> for every layer k."""
    delta = ft_means - base_means
    l2 = np.linalg.norm(delta, axis=1)
    cos = (base_means * ft_means).sum(1) / np.maximum(
        np.linalg.norm(base_means, axis=1) * np.linalg.norm(ft_means, axis=1), 1e-12)
    proj = (delta * direction).sum(1)
    out: dict[str, float] = {}
    for k in range(delta.shape[0]):
        out[f"drift/l2/layer_{k}"] = float(l2[k])
        out[f"drift/cos/layer_{k}"] = float(cos[k])
        out[f"drift/refusal_proj/layer_{k}"] = float(proj[k])
    return out
