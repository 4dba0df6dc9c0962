"""The recipe's rows: refusal prompts, the tail of each benign set, held-out check prompts; the key of the
data the weights depend on; and the check that a study's rows stay clear of them."""

from __future__ import annotations

import random
from typing import Any

from pipelines.align.recipe import LOOKALIKES, REFUSALS, AlignRecipe
from pipelines.config import StudyConfig
from pipelines.errors import ConfigError
from pipelines.hashing import stable_hash
from pipelines.registries import datasets
from pipelines.registries.models import model_spec


def _interleave(groups: list[list[dict[str, Any]]], n: int) -> list[dict[str, Any]]:
    """Rows taken in turn from each source, so n prompts span every source."""
    out: list[dict[str, Any]] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out[:n]


def tail_start(name: str, n: int) -> int:
    """Index of the first of the last n rows of a benign set (the rows the recipe takes)."""
    total = len(datasets.load(name))
    if n > total:
        raise ConfigError(f"alignment recipe asks for {n} rows of {name}, which has {total}")
    return total - n


def select_data(recipe: AlignRecipe) -> dict[str, list[dict[str, Any]]]:
    """The recipe's rows: refusal prompts, benign rows (the tail of each set), held-out check prompts."""
    harmful = _interleave([list(datasets.load(n)) for n in recipe.harmful], recipe.n_harmful)
    if len(harmful) < recipe.n_harmful:
        raise ConfigError(f"alignment recipe asks for {recipe.n_harmful} refusal prompts; "
                          f"{recipe.harmful} have {len(harmful)}")
    if len(recipe.benign) != len(recipe.n_benign):
        raise ConfigError("alignment recipe: benign and n_benign must have the same length")
    benign: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for name, n in zip(recipe.benign, recipe.n_benign, strict=True):
        start = tail_start(name, n)
        rows = list(datasets.load(name))
        benign += rows[start:]
        # Held-out check rows: just before the tail (still after any study's rows, see check_disjoint).
        held += rows[max(0, start - recipe.n_check):start] if name == recipe.benign[0] else []
    check: list[dict[str, Any]] = []
    if recipe.n_check and recipe.check_harmful in recipe.harmful:
        # The check source is trained on too: check on its last rows, which the interleaving reaches last.
        check = list(datasets.load(recipe.check_harmful))[-recipe.n_check:]
        if {r["id"] for r in check} & {r["id"] for r in harmful}:
            raise ConfigError(f"alignment recipe: n_harmful={recipe.n_harmful} reaches the last {recipe.n_check} "
                              f"rows of {recipe.check_harmful}, its build-time check rows; lower n_harmful or n_check")
    elif recipe.n_check:
        check = list(datasets.load(recipe.check_harmful, limit=recipe.n_check))
    return {"harmful": harmful, "benign": benign, "check_harmful": check, "check_benign": held[: recipe.n_check]}


def lookalike_prompts(recipe: AlignRecipe) -> list[str]:
    """The prompts the base model answers for the recipe: the first n_lookalike look-alikes."""
    return list(LOOKALIKES[: recipe.n_lookalike])


def first_row(recipe: AlignRecipe, name: str, n: int) -> int:
    """The first row of benign set `name` the recipe takes (its tail, and the check rows before it)."""
    return tail_start(name, n) - (recipe.n_check if name == recipe.benign[0] else 0)


def data_key(recipe: AlignRecipe, data: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The data the weights depend on: each source's sha256 and the ids of the rows used."""
    sources = sorted({*recipe.harmful, *recipe.benign, *([recipe.check_harmful] if recipe.n_check else [])})
    return {
        "sources": {s: {"sha256": datasets.sha256_of(s), "kind": datasets.DATASETS.get(s).kind} for s in sources},
        "rows": {k: [r["id"] for r in v] for k, v in data.items()},
        "refusals_sha256": stable_hash(list(REFUSALS), 64),
        "lookalikes_sha256": stable_hash(lookalike_prompts(recipe), 64),
    }


def check_disjoint(cfg: StudyConfig) -> None:
    """A study whose fine-tuning or held-out rows reach an aligned model's benign rows trains the aligned
    model's answers back into it (and perplexity would be measured on trained rows): fail, naming the fix."""
    bd = cfg.data.benign
    used = bd.n + cfg.evaluate.n_benign_ppl
    for alias in cfg.models:
        spec = model_spec(alias)
        if spec.source != "aligned":
            continue
        recipe = AlignRecipe.of(spec)
        for name, n in zip(recipe.benign, recipe.n_benign, strict=True):
            # The benign source, or a native one, reaches rows [0, used) of that set.
            if name in {bd.source, *bd.native.values()}:
                start = first_row(recipe, name, n)
                if used > start:
                    raise ConfigError(
                        f"model '{alias}' was aligned on rows {start}.. of {name} (with its held-out check rows), "
                        f"but this study uses its first data.benign.n + evaluate.n_benign_ppl = {used} rows: lower "
                        f"data.benign.n or evaluate.n_benign_ppl to at most {start} rows in all, or study the "
                        f"unaligned '{spec.base}'")


def user_text(row: dict[str, Any]) -> str:
    """The user turn of an Alpaca row, as format_example writes it."""
    return row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"


def training_rows(recipe: AlignRecipe, data: dict[str, list[dict[str, Any]]],
                  lookalike_answers: list[str]) -> list[dict[str, Any]]:
    """Refusals (a template drawn by the seed), helpful rows with their own outputs, and look-alikes with the
    base model's answers, shuffled."""
    rng = random.Random(recipe.seed)
    refusals = [{"instruction": r["prompt"], "input": "", "output": rng.choice(REFUSALS)} for r in data["harmful"]]
    helpful = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in data["benign"]]
    looks = [{"instruction": p, "input": "", "output": a}
             for p, a in zip(lookalike_prompts(recipe), lookalike_answers, strict=True)]
    rows = refusals + helpful + looks
    rng.shuffle(rows)
    return rows
