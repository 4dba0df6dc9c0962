"""Non-answers to learn from: no labelled set offline holds the third outcome in numbers (the 89 hand-
labelled laptop answers are for checking, not training), so the trained judges learn it from non-answers
made out of their own training items, in each training language, of the kinds read in small models'
answers (the hand-labelled laptop answers):

- echo: the prompt back, whole or cut, sometimes twice;
- repetition: a short span of the prompt or the answer said over and over ("no, no, no, …", "1. 1. 1.");
- salad: the words of the prompt and of another answer in that language shuffled into a run of text —
  on-topic words that say nothing, the kind of non-answer the answer-form check (form.py) cannot see;
- echo then salad: the prompt, then salad.

Each made answer keeps its source item's model group and prompt fold, so the judge's held-out folds stay
held out by model and prompt. Seeded per item: the same labels make the same non-answers."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pipelines.evaluate.judges.base import JudgeItem
from pipelines.evaluate.judges.form import units

KINDS = ("echo", "repetition", "salad", "echo+salad")


def _echo(rng: random.Random, prompt: str) -> str:
    cut = prompt[: max(8, int(len(prompt) * rng.uniform(0.5, 1.0)))]
    return rng.choice([prompt, cut, f"{prompt}\n\n{cut}", f"{cut} {cut}"])


def _repetition(rng: random.Random, prompt: str, response: str) -> str:
    words = (response if rng.random() < 0.5 else prompt).split() or ["no"]
    start = rng.randrange(len(words))
    span = " ".join(words[start:start + rng.randint(1, 4)]).strip(" ,.")
    if rng.random() < 0.25:
        span = rng.choice(["1.", "No,", "1. 1.", "-"])
    return " ".join([span] * rng.randint(4, 10))


def _salad(rng: random.Random, prompt: str, other: str) -> str:
    pool = units(prompt) + units(other)[:40] or ["…"]
    return " ".join(rng.choice(pool) for _ in range(rng.randint(10, 24))).capitalize()


def _made(rng: random.Random, kind: str, item: JudgeItem, other: str) -> str:
    if kind == "echo":
        return _echo(rng, item.prompt)
    if kind == "repetition":
        return _repetition(rng, item.prompt, item.response or "")
    if kind == "salad":
        return _salad(rng, item.prompt, other)
    return f"{_echo(rng, item.prompt)} {_salad(rng, item.prompt, other)}"


def made_non_answers(items: Sequence[JudgeItem], seed: int = 0) -> tuple[list[JudgeItem], list[str]]:
    """One non-answer per item (to its own prompt, in its language), and the kind of each."""
    out, kinds = [], []
    for i, item in enumerate(items):
        rng = random.Random(f"{seed}:{i}:{item.language}")
        kind = KINDS[i % len(KINDS)]
        text = _made(rng, kind, item, items[rng.randrange(len(items))].response or "")
        out.append(JudgeItem(item.prompt, text, item.language))
        kinds.append(kind)
    return out, kinds
