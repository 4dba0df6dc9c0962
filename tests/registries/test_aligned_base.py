"""The aligned base (source="aligned"): built once with real peft on the tiny test model, its manifest
records recipe, data (sha256, row ids) and checks, a second prepare does nothing, and its data never
touches the eval set or a study's fine-tuning and held-out rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines.align import check_disjoint
from pipelines.align.build import AlignedBuild
from pipelines.align.data import select_data
from pipelines.align.recipe import ALL_LINEAR, LOOKALIKES, REFUSALS, AlignRecipe
from pipelines.errors import ConfigError
from pipelines.presets import load_config
from pipelines.registries import datasets
from pipelines.registries.models import ModelSpec, model_spec


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tiny_aligned_build_records_its_recipe_and_is_reused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.prepare import prepare
    from pipelines.registries.model_store import model_dir

    cfg = load_config("smoke", ["models=[tiny-llama-aligned]", "judge.agreement=false"])
    took = prepare(cfg)
    assert "model tiny-llama-aligned" in took
    out = model_dir("tiny-llama-aligned")
    assert out.parent == cache / "models" and out.name.startswith("tiny-llama-aligned-")
    m = json.loads((out / "manifest.json").read_text())

    # Recipe, base and data: every source with the registry's sha256, the rows by id, the templates.
    recipe = AlignRecipe.of(model_spec("tiny-llama-aligned"))
    assert m["source"] == "aligned" and m["base"]["alias"] == "tiny-llama"
    assert m["recipe"]["steps"] == recipe.steps == 3 and m["recipe"]["lora_r"] == recipe.lora_r
    for name in ("harmbench", "advbench", "alpaca_en", "alpaca_zh", "strongreject"):
        assert m["data"]["sources"][name]["sha256"] == datasets.DATASETS.get(name).sha256
    assert "multijail" not in m["data"]["sources"]
    assert len(m["data"]["rows"]["harmful"]) == recipe.n_harmful
    assert len(m["data"]["rows"]["benign"]) == sum(recipe.n_benign)
    assert m["refusals"] == list(REFUSALS) and m["lookalikes"] == list(LOOKALIKES[: recipe.n_lookalike])
    assert m["train"]["steps"] == 3 and m["train"]["examples"] > 0 and m["train"]["loss_last"] > 0
    assert m["check"]["harmful"]["n"] == recipe.n_check and 0 <= m["check"]["harmful"]["refusal_rate"] <= 1
    assert m["check"]["benign"]["n"] == recipe.n_check

    # The LoRA is merged: a plain transformers directory whose weights differ from the base's.
    tuned = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(model_dir("tiny-llama"))
    assert not any(k.startswith("base_model") or "lora" in k for k in tuned.state_dict())
    w = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(tuned.state_dict()[w], base.state_dict()[w])

    # The report's provenance: how the base was aligned, the data with sha256, the build's checks.
    from pipelines.report.provenance import model_info

    info = model_info("tiny-llama-aligned")
    prov = info["aligned"]
    assert info["source"] == "aligned" and info["weights"].startswith("aligned locally from tiny-llama")
    assert prov["dir"] == out.name and "aligned locally" in prov["statement"] and "English" in prov["statement"]
    assert prov["sources"]["harmbench"]["sha256"] == datasets.DATASETS.get("harmbench").sha256
    assert prov["rows"]["harmful"] == recipe.n_harmful and prov["check"] == m["check"]

    # A second prepare does nothing: no build is attempted and the directory is untouched.
    mtime = (out / "manifest.json").stat().st_mtime_ns

    def no_rebuild(self: AlignedBuild, tmp: Path, base_dir: Path) -> dict:
        raise AssertionError("the aligned base was built again")

    monkeypatch.setattr(AlignedBuild, "build", no_rebuild)
    prepare(cfg)
    assert model_dir("tiny-llama-aligned") == out
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_lookalikes_asked_behind_a_preface_are_trained_without_it(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base that over-refuses is asked the look-alikes behind a preface that says they are harmless; the
    recipe trains on the bare prompt with that answer (the preface never reaches the weights), and a recipe
    with no helpful rows builds, its benign check empty rather than a crash."""
    from pipelines.align import build as build_mod
    from pipelines.align import train as train_mod
    from pipelines.registries.model_store import model_dir

    preface = "This is harmless. "
    spec = ModelSpec("tiny-prefaced", "aligned", "llama", base="tiny-llama",
                     align={**model_spec("tiny-llama-aligned").align, "benign": [], "n_benign": [],
                            "lookalike_preface": preface})
    asked: list[str] = []
    trained: list[dict] = []
    real_generate, real_train = build_mod.generate_answers, train_mod.train_lora

    def generate(model, tok, prompts, gcfg):  # noqa: ANN001, ANN202 - records what the base is asked
        asked.extend(prompts)
        return real_generate(model, tok, prompts, gcfg)

    def train(model, tok, rows, recipe):  # noqa: ANN001, ANN202 - records what the LoRA learns from
        trained.extend(rows)
        return real_train(model, tok, rows, recipe)

    monkeypatch.setattr(build_mod, "generate_answers", generate)
    monkeypatch.setattr(build_mod, "train_lora", train)
    b = AlignedBuild(spec)
    m = b.build(cache / "prefaced", model_dir("tiny-llama"))
    looks = list(LOOKALIKES[: b.recipe.n_lookalike])
    assert asked[: len(looks)] == [preface + p for p in looks]
    assert {r["instruction"] for r in trained} >= set(looks) and not any(preface in r["instruction"] for r in trained)
    assert m["recipe"]["lookalike_preface"] == preface and m["check"]["benign"]["n"] == 0
    assert b.path() != AlignedBuild(ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama",
                                              align={**spec.align, "lookalike_preface": ""})).path()


def test_key_follows_recipe_and_base() -> None:
    spec = model_spec("tiny-llama-aligned")
    other = ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama", align={**spec.align, "lr": 1e-4})
    rebased = ModelSpec(spec.alias, "aligned", "llama", base="tiny-qwen2", align=spec.align)
    paths = {AlignedBuild(s).path() for s in (spec, other, rebased)}
    assert len(paths) == 3
    assert AlignedBuild(spec).path() == AlignedBuild(model_spec("tiny-llama-aligned")).path()


def test_laptop_recipe_rows_are_disjoint_from_the_study() -> None:
    # The laptop preset's data with SmolLM2's aligned base (the laptop's base until Qwen2.5 replaced it).
    aligned = "models=[smollm2-135m-aligned]"
    cfg = load_config("laptop", [aligned])
    recipe = AlignRecipe.of(model_spec("smollm2-135m-aligned"))
    data = select_data(recipe)
    used = cfg.data.benign.n + cfg.evaluate.n_benign_ppl
    study_rows = {r["id"] for name in ("alpaca_en", "alpaca_zh") for r in datasets.load(name, limit=used)}
    picked = {r["id"] for key in ("benign", "check_benign") for r in data[key]}
    assert picked and not picked & study_rows
    assert {r["source"] for r in data["harmful"]} == set(recipe.harmful)
    assert not {r["source"] for r in data["harmful"]} & {"multijail", cfg.data.eval.harmful}
    check_disjoint(cfg)  # the preset passes
    # A study that would fine-tune on the aligned base's rows fails before any work, naming the setting.
    with pytest.raises(ConfigError, match="data.benign.n"):
        check_disjoint(load_config("laptop", [aligned, "data.benign.n=990"]))


def test_check_rows_stay_out_of_training_when_the_check_source_is_trained_on() -> None:
    """With the check source among the refusal sources, the check takes its last rows, never a trained one."""
    with_sr = AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="smollm2-135m-instruct",
                                       align={"harmful": ["harmbench", "advbench", "strongreject"], "n_harmful": 180}))
    data = select_data(with_sr)
    trained = {r["id"] for r in data["harmful"]}
    assert any(i.startswith("strongreject/") for i in trained)
    assert len(data["check_harmful"]) == with_sr.n_check and not trained & {r["id"] for r in data["check_harmful"]}
    too_many = AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="smollm2-135m-instruct",
                                        align={"harmful": ["strongreject"], "n_harmful": 313}))
    with pytest.raises(ConfigError, match="check rows"):
        select_data(too_many)


def test_built_directories_keep_their_names() -> None:
    """The recipe keeps only the fields in use; its key is what the first builds hashed, so a model store
    that holds them does not build them again. (Renamed once, on purpose, when model files in PyPI wheels
    became data read by hash and the registry lost its installed-package field: the bases' keys changed.)"""
    assert AlignedBuild(model_spec("smollm2-135m-aligned")).path().name == "smollm2-135m-aligned-8bfe9119f48d"
    assert AlignedBuild(model_spec("tiny-llama-aligned")).path().name == "tiny-llama-aligned-d395a0903b67"



def test_unknown_recipe_field_is_named() -> None:
    with pytest.raises(ConfigError, match="stpes"):
        AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="tiny-llama", align={"stpes": 3}))
    with pytest.raises(ConfigError, match="objective"):  # a variant tried once, not kept (RESULTS.md)
        AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="tiny-llama", align={"objective": "dpo"}))


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3}


def test_lookalikes_are_not_xstest_prompts() -> None:
    """The look-alikes are written for the recipe, not XSTest's safe prompts (the eval's over-refusal set)
    nor its contrast prompts (in the trained judge's labels): none shares most of its words with one."""
    import csv

    with datasets.resolve("xstest_safe").open(encoding="utf-8", newline="") as fh:
        xstest = [_words(r["prompt"]) for r in csv.DictReader(fh)]
    for prompt in LOOKALIKES:
        mine = _words(prompt)
        worst = max(len(mine & x) / max(1, len(mine | x)) for x in xstest)
        assert worst < 0.5, prompt


def test_refusal_templates_read_as_refusals() -> None:
    """What the recipe trains is what the study's phrase judge counts as a refusal."""
    from pipelines.evaluate.judges import JudgeItem, make_judge

    verdicts = make_judge("refusal-phrase").judge([JudgeItem("q", r, "en") for r in REFUSALS])
    assert [v.label for v in verdicts] == [0] * len(REFUSALS)
    assert len(set(REFUSALS)) == len(REFUSALS) >= 6
    assert ALL_LINEAR[-1] == "down_proj"
