"""Capability: WikiText-2 perplexity by a sliding window with a stride (each token scored once, with up
to window − stride tokens of context), perplexity of held-out benign answers in each language (the
answer tokens only, after the chat-formatted instruction), and an optional MMLU-style multiple-choice
file and an AlpacaEval-style instruction file given by the user (see user_evalsets)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipelines.evaluate.backends.transformers import generate_answers
from pipelines.evaluate.judges.trained import MiniLMEncoder
from pipelines.evaluate.user_sets import LETTERS, alpaca_rows, mmlu_rows
from pipelines.registries import datasets


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
        ids = input_ids[:, begin:end].to(model.device)  # the loss on the model's device (a GPU's bf16 copy)
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
        ids = torch.tensor([(p_ids + a_ids)[:max_length]], device=model.device)
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


    rows = mmlu_rows(path, limit)
    hits = 0
    for r in rows:
        choices = r["choices"]
        q = r["question"] + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)) + "\nAnswer:"
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(ids.to(model.device)).logits[0, -1].float().cpu()
        cand = [tok(LETTERS[i], add_special_tokens=False)["input_ids"][0] for i in range(len(choices))]
        pred = int(torch.stack([logits[c] for c in cand]).argmax())
        hits += int(pred == r["answer"])
    return hits / len(rows), len(rows)


def alpacaeval_scores(model: Any, tok: Any, path: Path, gcfg: Any, limit: int = 100) -> dict[str, float]:
    """A user's AlpacaEval-style JSONL ({instruction, output}). AlpacaEval proper needs a GPT-4-class
    pairwise judge; on CPU and offline we score what can be measured without one: how close each answer
    is to its reference (cosine of all-MiniLM-L6-v2 embeddings, the encoder the trained judge ships),
    how likely the model finds the reference answer (perplexity), and the answers' length, since
    length is what such similarity scores are most biased by."""
    import numpy as np


    rows = alpaca_rows(path, limit)
    instructions = [r["instruction"] for r in rows]
    answers: list[str] = []
    for i in range(0, len(rows), gcfg.batch_size):
        answers += generate_answers(model, tok, instructions[i:i + gcfg.batch_size], gcfg)
    enc = MiniLMEncoder()
    a, ref = enc.encode(answers), enc.encode([r["output"] for r in rows])
    sim = (a * ref).sum(axis=1)  # both L2-normalised
    ppl, _ = answer_ppl(model, tok, [(r["instruction"], r["output"]) for r in rows])
    lengths = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in answers]
    return {"capability/alpacaeval_ref_sim": float(np.mean(sim)), "capability/alpacaeval_ref_ppl": ppl,
            "capability/alpacaeval_answer_tokens": float(np.mean(lengths)), "capability/alpacaeval_n": float(len(rows))}
