"""The aligned model's cached directory: named by the hash of recipe + data + base, built once (train,
merge, save, check) under `models_cache()`. Its manifest holds the recipe, the data sources with sha256 and
the row ids used, the training figures, and a build-time check: the refusal-phrase rate on held-out prompts
(a harmful source never trained on; held-out Alpaca rows)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.storage import atomic_dir, read_manifest, write_manifest
from pipelines.align.data import data_key, lookalike_prompts, select_data, training_rows
from pipelines.align.recipe import REFUSALS, AlignRecipe
from pipelines.align.train import train_lora
from pipelines.config import GenerateConfig
from pipelines.errors import ConfigError
from pipelines.evaluate.backends.transformers import generate_answers, load_for_generation
from pipelines.evaluate.judges.base import JudgeItem
from pipelines.evaluate.judges.phrase import RefusalPhraseJudge
from pipelines.hashing import stable_hash
from pipelines.layout import models_cache
from pipelines.registries.models import ModelSpec, model_spec, spec_key

log = logging.getLogger(__name__)


def refusal_rate(model: Any, tok: Any, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
    """Share of answers the refusal-phrase judge labels refusals (a cheap proxy; the study's judge on the
    eval set is measured in benchmarks/aligned_base)."""
    if not prompts:
        return {"n": 0, "refusal_rate": float("nan")}
    gcfg = GenerateConfig(max_new_tokens=max_new_tokens, batch_size=32)
    answers = [a for i in range(0, len(prompts), 32) for a in generate_answers(model, tok, prompts[i:i + 32], gcfg)]
    # The judge's class itself, not the registry: the registry names judges (the LLM judge) whose models
    # the model store prepares, and the store builds aligned models with this module.
    verdicts = RefusalPhraseJudge().judge([JudgeItem(p, a, "en") for p, a in zip(prompts, answers, strict=True)])
    return {"n": len(prompts), "refusal_rate": sum(v.label == 0 for v in verdicts) / len(prompts)}


@dataclass
class AlignedBuild:
    spec: ModelSpec
    recipe: AlignRecipe = field(init=False)
    data: dict[str, list[dict[str, Any]]] = field(init=False)

    def __post_init__(self) -> None:
        if not self.spec.base:
            raise ConfigError(f"aligned model '{self.spec.alias}' names no base model (ModelSpec.base)")
        self.recipe = AlignRecipe.of(self.spec)
        self.data = select_data(self.recipe)

    def key(self) -> dict[str, Any]:
        base = model_spec(self.spec.base)  # type: ignore[arg-type]
        return {"base": {"alias": base.alias, "spec": stable_hash(spec_key(base), 16)},
                "recipe": self.recipe.key(), "data": data_key(self.recipe, self.data), "version": 1}

    def path(self) -> Path:
        return models_cache() / f"{self.spec.alias}-{stable_hash(self.key(), 12)}"

    def build(self, out: Path, base_dir: Path) -> dict[str, Any]:
        """Train from the base model in `base_dir`, merge, save into `out`, check; returns the manifest's
        fields."""
        recipe, t0, cpu0 = self.recipe, time.time(), time.process_time()
        model, tok = load_for_generation(base_dir, None, recipe.threads)
        looks = lookalike_prompts(recipe)
        gcfg = GenerateConfig(max_new_tokens=recipe.lookalike_tokens, batch_size=max(1, len(looks)))
        asked = [f"{recipe.lookalike_preface}{p}" for p in looks]
        answers = generate_answers(model, tok, asked, gcfg) if looks else []
        t_look = time.time() - t0
        # Training batches are right-padded by collate itself, whatever the tokenizer's padding side.
        trained = train_lora(model, tok, training_rows(recipe, self.data, answers), recipe)
        merged = trained.pop("model")
        check = {
            "harmful": {"source": recipe.check_harmful,
                        **refusal_rate(merged, tok, [r["prompt"] for r in self.data["check_harmful"]], recipe.check_tokens)},
            "benign": {"source": recipe.benign[0] if recipe.benign else None,  # a recipe may teach no helpful rows
                       **refusal_rate(merged, tok, [r["instruction"] for r in self.data["check_benign"]], recipe.check_tokens)},
        }
        merged.save_pretrained(out)
        tok.save_pretrained(out)
        key = self.key()
        return {"alias": self.spec.alias, "source": "aligned", "key": stable_hash(key, 12), "base": key["base"],
                "recipe": key["recipe"], "data": key["data"], "refusals": list(REFUSALS), "lookalikes": looks,
                "helpful_answers": "dataset outputs",
                "train": trained | {"lookalike_answers_s": round(t_look, 1)},
                "check": check, "judge": "refusal-phrase", "build_s": round(time.time() - t0, 1),
                # CPU seconds too: wall time on a shared machine says more about the others' load.
                "build_cpu_s": round(time.process_time() - cpu0, 1)}


def aligned_dir(spec: ModelSpec, model_dir: Callable[[str], Path]) -> Path:
    """The model store's entry point for source="aligned": the cached directory, built on first use.
    `model_dir` is the store's (alias -> directory), called for the base only when a build is needed, so a
    cached aligned model never prepares its base."""
    b = AlignedBuild(spec)
    out = b.path()
    if read_manifest(out) is not None:
        return out
    log.info("aligning %s from %s (once; a few minutes on 2 cores)", spec.alias, spec.base)
    with atomic_dir(out) as tmp:
        write_manifest(tmp, **b.build(tmp, model_dir(spec.base)))  # type: ignore[arg-type]
    return out
