"""Capability: WikiText-2 perplexity by a sliding window with a stride (each token scored once, with up
to window − stride tokens of context), perplexity of held-out benign answers in each language (the
answer tokens only, after the chat-formatted instruction), and an optional MMLU-style multiple-choice
file given by the user (accuracy by the likeliest answer letter)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def sliding_ppl(model: Any, input_ids: Any, window: int, stride: int) -> tuple[float, int]:
    """(perplexity, tokens scored) of one long token sequence (shape [1, T]), the standard strided
    evaluation: each window scores only the tokens not scored by the previous one."""
    import torch

    seq_len = int(input_ids.shape[1])
    nll_sum, n_tok, prev_end = 0.0, 0, 0
    stride = min(stride, window)
    for begin in range(0, max(seq_len - 1, 1), stride):
        end = min(begin + window, seq_len)
        trg = end - prev_end  # tokens new to this window
        ids = input_ids[:, begin:end]
        labels = ids.clone()
        labels[:, :-trg] = -100
        with torch.inference_mode():
            logits = model(ids).logits[:, :-1].float()
        tgt = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        k = int((tgt != -100).sum())
        nll_sum += float(loss)
        n_tok += k
        prev_end = end
        if end == seq_len:
            break
    return (math.exp(nll_sum / n_tok) if n_tok else float("nan")), n_tok


def wikitext_ppl(model: Any, tok: Any, max_tokens: int, window: int, stride: int) -> tuple[float, int]:
    from pipelines.registries import datasets

    # Joined as the usual evaluation does ("\n\n" between paragraphs), cut to the configured budget.
    text = "\n\n".join(r["text"] for r in datasets.load("wikitext2", limit=max(50, max_tokens // 20)))
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :max_tokens]
    return sliding_ppl(model, ids, window, stride)


def answer_ppl(model: Any, tok: Any, pairs: list[tuple[str, str]], max_length: int = 256) -> tuple[float, int]:
    """Perplexity of each answer given its chat-formatted instruction, pooled over tokens."""
    import torch

    nll, n = 0.0, 0
    for instruction, answer in pairs:
        prompt = tok.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                         add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([(p_ids + a_ids)[:max_length]])
        if len(p_ids) >= ids.shape[1] - 1:
            continue  # the answer does not fit: nothing to score
        labels = ids.clone()
        labels[:, :len(p_ids)] = -100
        with torch.inference_mode():
            logits = model(ids).logits[:, :-1].float()
        tgt = labels[:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                       ignore_index=-100, reduction="sum"))
        n += int((tgt != -100).sum())
    return (math.exp(nll / n) if n else float("nan")), n


def mmlu_accuracy(model: Any, tok: Any, path: Path, limit: int = 100) -> tuple[float, int]:
    """A user's MMLU-style JSONL ({question, choices: [..], answer: index or letter}): accuracy of the
    likeliest next letter after the chat-formatted question."""
    import torch

    letters = "ABCDEFGH"
    rows = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()][:limit]
    hits = 0
    for r in rows:
        choices = r["choices"]
        q = r["question"] + "\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices)) + "\nAnswer:"
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(ids).logits[0, -1]
        cand = [tok(letters[i], add_special_tokens=False)["input_ids"][0] for i in range(len(choices))]
        pred = int(torch.stack([logits[c] for c in cand]).argmax())
        gold = r["answer"] if isinstance(r["answer"], int) else letters.index(str(r["answer"]).strip().upper())
        hits += int(pred == gold)
    return (hits / len(rows) if rows else float("nan")), len(rows)
