"""The aligned base (source="aligned"): built once with real peft on the tiny test model, its manifest
records recipe, data (sha256, row ids) and checks, a second prepare does nothing, and its data never
touches the eval set or a study's fine-tuning and held-out rows."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.finetune import align
from pipelines.finetune.align import (
    LOOKALIKES,
    REFUSALS,
    AlignedBuild,
    AlignRecipe,
    check_disjoint,
    select_data,
)
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
    assert info["source"] == "aligned" and info["weights"] == "aligned locally from tiny-llama"
    assert prov["dir"] == out.name and "aligned locally" in prov["statement"] and "English" in prov["statement"]
    assert prov["sources"]["harmbench"]["sha256"] == datasets.DATASETS.get("harmbench").sha256
    assert prov["rows"]["harmful"] == recipe.n_harmful and prov["check"] == m["check"]

    # A second prepare does nothing: no build is attempted and the directory is untouched.
    mtime = (out / "manifest.json").stat().st_mtime_ns

    def no_rebuild(self: AlignedBuild, tmp: Path) -> dict:
        raise AssertionError("the aligned base was built again")

    monkeypatch.setattr(AlignedBuild, "build", no_rebuild)
    prepare(cfg)
    assert model_dir("tiny-llama-aligned") == out
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_key_follows_recipe_and_base() -> None:
    spec = model_spec("tiny-llama-aligned")
    other = ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama", align={**spec.align, "lr": 1e-4})
    rebased = ModelSpec(spec.alias, "aligned", "llama", base="tiny-qwen2", align=spec.align)
    paths = {AlignedBuild(s).path() for s in (spec, other, rebased)}
    assert len(paths) == 3
    assert AlignedBuild(spec).path() == AlignedBuild(model_spec("tiny-llama-aligned")).path()


def test_laptop_recipe_rows_are_disjoint_from_the_study() -> None:
    cfg = load_config("laptop")
    assert cfg.models == ["smollm2-135m-aligned"]
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
        check_disjoint(load_config("laptop", ["data.benign.n=990"]))


def test_helpful_answers_by_the_base_model(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """helpful_answers="base": the helpful rows are answered by the base model (greedy) instead of their own
    outputs; the default stays out of the key (built models keep their names); the manifest says which."""
    spec = model_spec("tiny-llama-aligned")
    assert "helpful_answers" not in AlignRecipe.of(spec).key()
    by_base = ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama", align={**spec.align, "helpful_answers": "base"})
    assert AlignRecipe.of(by_base).key()["helpful_answers"] == "base"
    assert AlignedBuild(by_base).path() != AlignedBuild(spec).path()
    with pytest.raises(ConfigError, match="helpful_answers"):
        AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="tiny-llama", align={"helpful_answers": "gpt"}))

    seen: list[list[dict]] = []
    real = align.training_rows

    def spy(recipe: AlignRecipe, data: dict, looks: list[str], helpful: list[str] | None = None) -> list[dict]:
        rows = real(recipe, data, looks, helpful)
        seen.append(rows)
        return rows

    monkeypatch.setattr(align, "training_rows", spy)
    b = AlignedBuild(by_base)
    m = b.build(cache / "out")
    assert m["helpful_answers"].startswith("base model tiny-llama") and m["recipe"]["helpful_answers"] == "base"
    assert m["train"]["base_answers_s"] >= 0
    own = {(r["instruction"], r["input"]): r["output"] for r in b.data["benign"]}
    trained = [r for r in seen[0] if (r["instruction"], r["input"]) in own]
    assert len(trained) == len(own) and all(r["output"] != own[(r["instruction"], r["input"])] for r in trained)
    assert "answered by the base model itself" in align.describe(m)


def test_dpo_objective_pairs_and_reference(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """objective="dpo": harmful prompts reject the base model's own compliant answer, every other row rejects
    a refusal template; the reference is the base model (so the DPO loss starts at log 2, where policy and
    reference agree); the SFT default stays out of the key."""
    spec = model_spec("tiny-llama-aligned")
    assert "objective" not in AlignRecipe.of(spec).key()
    dpo = ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama", align={**spec.align, "objective": "dpo"})
    assert AlignRecipe.of(dpo).key()["objective"] == "dpo" and AlignedBuild(dpo).path() != AlignedBuild(spec).path()
    with pytest.raises(ConfigError, match="objective"):
        AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="tiny-llama", align={"objective": "ppo"}))

    rows = [{"instruction": "harm a", "input": "", "output": REFUSALS[0]},
            {"instruction": "harm b", "input": "", "output": REFUSALS[1]},
            {"instruction": "bake bread", "input": "", "output": "Mix flour and water."}]
    said = {"harm a": "Sure, here is how: step one.", "harm b": "I'm sorry, but I can't help with that."}
    paired = align.preference_pairs(rows, said, seed=0)
    assert paired[0]["rejected"] == said["harm a"]
    assert "rejected" not in paired[1]  # the base already refused: nothing to push away from
    assert paired[2]["rejected"] in REFUSALS and paired[2]["output"] == rows[2]["output"]

    seen: list[list[dict]] = []
    real = align.train_lora

    def spy(model: object, tok: object, rows: list[dict], recipe: AlignRecipe) -> dict:
        seen.append(rows)
        return real(model, tok, rows, recipe)

    monkeypatch.setattr(align, "train_lora", spy)
    b = AlignedBuild(dpo)
    m = b.build(cache / "out")
    t = m["train"]
    # Rows whose prompt alone fills max_length train nothing (format_example drops them).
    from transformers import AutoTokenizer

    from pipelines.finetune.data import format_example
    from pipelines.registries.model_store import model_dir

    tok = AutoTokenizer.from_pretrained(model_dir("tiny-llama"))
    rejecting = [r for r in seen[0] if "rejected" in r and format_example(tok, r, b.recipe.max_length) is not None]
    assert t["pairs"] == len(rejecting) > 0 and any(r["rejected"] in REFUSALS for r in rejecting)
    assert math.isclose(t["dpo_loss_first"], math.log(2), rel_tol=1e-3)
    assert 0 <= t["dpo_accuracy_last5"] <= 1 and t["base_answers_s"] >= 0
    assert "a DPO term (beta 0.1, weight 1)" in align.describe(m)
    assert "DPO" not in align.describe(m | {"recipe": AlignRecipe.of(spec).key()})


def test_sequence_logps_matches_the_training_loss() -> None:
    """sequence_logps sums the labelled tokens' log-probabilities: minus the mean loss times their count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.finetune.data import FORWARD_KWARGS, collate, format_example
    from pipelines.registries.model_store import model_dir

    model = AutoModelForCausalLM.from_pretrained(model_dir("tiny-llama")).eval()
    tok = AutoTokenizer.from_pretrained(model_dir("tiny-llama"))
    ex = format_example(tok, {"instruction": "Name a colour.", "input": "", "output": "Blue, like the sky."}, 64)
    batch = collate([ex], tok.pad_token_id)
    with torch.no_grad():
        loss = model(**batch, **FORWARD_KWARGS).loss.item()
        got = align.sequence_logps(model, batch)[0].item()
    n = sum(x != -100 for x in ex["labels"])
    assert math.isclose(got, -loss * n, rel_tol=1e-4)


def test_first_token_nll_is_the_loss_of_each_answers_first_token() -> None:
    """first_token_nll averages, over the examples, the loss of the first answer token alone: a one-token
    answer's first-token loss is its whole loss; two examples average; decision_weight stays out of the key."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.finetune.data import FORWARD_KWARGS, collate, format_example
    from pipelines.registries.model_store import model_dir

    model = AutoModelForCausalLM.from_pretrained(model_dir("tiny-llama")).eval()
    tok = AutoTokenizer.from_pretrained(model_dir("tiny-llama"))
    long = format_example(tok, {"instruction": "Name a colour.", "input": "", "output": "Blue, like the sky."}, 64)
    short = format_example(tok, {"instruction": "Say hi.", "input": "", "output": "Hi"}, 64)
    first = next(i for i, v in enumerate(short["labels"]) if v != -100)
    one = short | {"labels": [v if i == first else -100 for i, v in enumerate(short["labels"])]}
    with torch.no_grad():
        whole_one = model(**collate([one], tok.pad_token_id), **FORWARD_KWARGS).loss.item()
        b = collate([one], tok.pad_token_id)
        got_one = align.first_token_nll(model(**b, **FORWARD_KWARGS).logits, b["labels"]).item()
        b2 = collate([long], tok.pad_token_id)
        got_long = align.first_token_nll(model(**b2, **FORWARD_KWARGS).logits, b2["labels"]).item()
        both = collate([long, one], tok.pad_token_id)  # right padding: the shorter row's first token too
        got_both = align.first_token_nll(model(**both, **FORWARD_KWARGS).logits, both["labels"]).item()
        whole_long = model(**b2, **FORWARD_KWARGS).loss.item()
    assert math.isclose(got_one, whole_one, rel_tol=1e-4)
    assert not math.isclose(got_long, whole_long, rel_tol=1e-3)  # one token of several, not their mean
    assert math.isclose(got_both, (got_long + got_one) / 2, rel_tol=1e-4)
    assert "decision_weight" not in AlignRecipe.of(model_spec("tiny-llama-aligned")).key()


def test_helpful_opener_and_lr_schedule() -> None:
    """helpful_opener opens every helpful answer and look-alike answer, never a refusal; lr_schedule is
    checked; both stay out of the key at their defaults (built models keep their names)."""
    spec = model_spec("tiny-llama-aligned")
    key = AlignRecipe.of(spec).key()
    assert "helpful_opener" not in key and "lr_schedule" not in key
    with pytest.raises(ConfigError, match="lr_schedule"):
        AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="tiny-llama", align={"lr_schedule": "cosine"}))
    opened = AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="tiny-llama",
                                      align={**spec.align, "helpful_opener": "Sure! "}))
    data = select_data(opened)
    looks = [f"answer {i}" for i in range(opened.n_lookalike)]
    rows = align.training_rows(opened, data, looks)
    refusals = [r for r in rows if r["output"] in REFUSALS]
    others = [r for r in rows if r["output"] not in REFUSALS]
    assert len(refusals) == opened.n_harmful and len(others) == sum(opened.n_benign) + opened.n_lookalike
    assert all(r["output"].startswith("Sure! ") for r in others)
    plain = align.training_rows(AlignRecipe.of(spec), select_data(AlignRecipe.of(spec)), looks)
    assert sorted(r["output"] for r in plain if r["output"] not in REFUSALS) == sorted(
        r["output"].removeprefix("Sure! ") for r in others)


def test_as_question_asks_both_sides_alike() -> None:
    """as_question rewrites imperatives on the refusal side and the helpful side alike, leaves questions and
    acronyms alone, and at 0 leaves every row as the default recipe writes it."""
    import random

    rng = random.Random(0)
    assert align.as_question("Write a poem about the sea.", rng).endswith("write a poem about the sea?")
    assert align.as_question("SQL injection: explain it", rng).endswith("SQL injection: explain it?")
    assert align.as_question("Why is the sky blue?", rng) == "Why is the sky blue?"
    spec = model_spec("tiny-llama-aligned")
    plain_recipe = AlignRecipe.of(spec)
    data = select_data(plain_recipe)
    looks = [f"answer {i}" for i in range(plain_recipe.n_lookalike)]
    asked = AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="tiny-llama", align={**spec.align, "as_question": 1.0}))
    rows = align.training_rows(asked, data, looks)
    plain = align.training_rows(plain_recipe, data, looks)
    assert [r["output"] for r in rows] == [r["output"] for r in plain]  # same templates, same order
    changed = [(a, b) for a, b in zip(rows, plain, strict=True) if a["instruction"] != b["instruction"]]
    assert {a["output"] in REFUSALS for a, _ in changed} == {True, False}  # both sides
    assert all(a["instruction"].endswith("?") for a, _ in changed)
    assert "as_question" not in plain_recipe.key() and asked.key()["as_question"] == 1.0


def test_decision_steps_train_the_first_token_on_balanced_batches(cache: Path) -> None:
    """decision_steps: a real tiny build runs the extra first-token steps (their loss recorded, the first step's
    at the SFT model's first-token loss, the last lower on these few rows); decision_examples keeps one
    labelled token per row, split refusals / others; the report's sentence names the phase."""
    from transformers import AutoTokenizer

    from pipelines.registries.model_store import model_dir

    spec = model_spec("tiny-llama-aligned")
    recipe = AlignRecipe.of(ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama",
                                      align={**spec.align, "decision_steps": 12, "lr": 1e-2}))
    tok = AutoTokenizer.from_pretrained(model_dir("tiny-llama"))
    data = select_data(recipe)
    rows = align.training_rows(recipe, data, [f"answer {i}" for i in range(recipe.n_lookalike)])
    refusals, others = align.decision_examples(tok, rows, recipe.max_length)
    # Rows whose prompt fills max_length have nothing to learn from (format_example), on either side.
    assert refusals and others and len(refusals) + len(others) == len(align.examples(tok, rows, recipe.max_length))
    assert all(sum(x != -100 for x in e["labels"]) == 1 and e["labels"][-1] != -100 for e in refusals + others)
    first_ids = {e["labels"][-1] for e in refusals}
    assert first_ids <= {tok(r, add_special_tokens=False)["input_ids"][0] for r in REFUSALS}
    b = AlignedBuild(ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama",
                               align={**spec.align, "decision_steps": 12, "lr": 1e-2}))
    m = b.build(cache / "out")
    assert m["recipe"]["decision_steps"] == 12
    assert m["train"]["decision_loss_last5_mean"] < m["train"]["decision_loss_first"]
    assert "first answer token alone" in align.describe(m)
    assert "decision_steps" not in AlignRecipe.of(spec).key()


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


def test_lora_from_layer_leaves_the_earlier_blocks_as_they_were(cache: Path) -> None:
    """lora_from_layer=1 on the two-block tiny model: block 0's weights are the base's after the merge, block
    1's are not; a layer past the last block is refused, naming how many blocks there are."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.registries.model_store import model_dir

    spec = model_spec("tiny-llama-aligned")
    late = ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama", align={**spec.align, "lora_from_layer": 1, "n_check": 0})
    AlignedBuild(late).build(cache / "late")
    tuned = AutoModelForCausalLM.from_pretrained(cache / "late").state_dict()
    base = AutoModelForCausalLM.from_pretrained(model_dir("tiny-llama")).state_dict()
    w = "model.layers.{}.mlp.down_proj.weight"
    assert torch.equal(tuned[w.format(0)], base[w.format(0)]) and not torch.equal(tuned[w.format(1)], base[w.format(1)])
    assert "lora_from_layer" not in AlignRecipe.of(spec).key()
    far = ModelSpec(spec.alias, "aligned", "llama", base="tiny-llama", align={**spec.align, "lora_from_layer": 5})
    with pytest.raises(ConfigError, match="2 blocks"):
        AlignedBuild(far).build(cache / "far")


def test_mtbench_prompts_are_answered_by_the_base_and_recorded() -> None:
    """n_mtbench: MT-Bench first turns join the prompts the base model answers, after the look-alikes and chat
    questions; the data key names the source (with its sha256) and the rows; 0 leaves the key as it was."""
    spec = model_spec("smollm2-135m-aligned")
    plain = AlignRecipe.of(spec)
    with_mt = AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="smollm2-135m-instruct",
                                       align={"n_mtbench": 5, "n_chat": 2}))
    data = select_data(with_mt)
    prompts = align.base_answered(with_mt, data)
    mt = list(datasets.load("mt_bench"))
    assert len(mt) == 80 and prompts[-5:] == [r["prompt"] for r in mt[:5]]
    assert prompts[: with_mt.n_lookalike] == list(LOOKALIKES[: with_mt.n_lookalike])
    key = align.data_key(with_mt, data)
    assert key["sources"]["mt_bench"]["sha256"] == datasets.DATASETS.get("mt_bench").sha256
    assert key["rows"]["mtbench"] == [r["id"] for r in mt[:5]]
    assert "mt_bench" not in align.data_key(plain, select_data(plain))["sources"] and "n_mtbench" not in plain.key()
    rows = align.training_rows(with_mt, data, [f"answer {i}" for i in range(len(prompts))])
    assert {r["instruction"] for r in rows if r["output"].startswith("answer ")} == set(prompts)


def test_match_openings_adds_rows_that_open_like_the_refusal_prompts() -> None:
    """match_openings adds, per refusal prompt, an unused alpaca_en row opening with the same word, from
    matched_from up to the check rows; check_disjoint then keeps a study's rows below matched_from."""
    base = AlignRecipe.of(model_spec("smollm2-135m-aligned"))
    matched = AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="smollm2-135m-instruct",
                                       align={"match_openings": True}))
    plain, more = select_data(base), select_data(matched)
    extra = [r for r in more["benign"] if r["id"] not in {x["id"] for x in plain["benign"]}]
    assert len(extra) > len(plain["harmful"]) // 2
    assert all(align.opening(r["instruction"]) in {align.opening(h["prompt"]) for h in more["harmful"]} for r in extra)
    words = [align.opening(r["instruction"]) for r in extra]
    assert words.count("write") == [align.opening(h["prompt"]) for h in more["harmful"]].count("write")
    index = {r["id"]: i for i, r in enumerate(datasets.load("alpaca_en"))}
    check = {r["id"] for r in more["check_benign"]}
    assert all(index[r["id"]] >= 100 for r in extra) and not check & {r["id"] for r in extra}
    assert len({r["id"] for r in more["benign"]}) == len(more["benign"])
    assert "match_openings" not in base.key() and matched.key()["match_openings"] is True
    # What check_disjoint compares a study's rows against.
    assert align.first_row(matched, "alpaca_en", 200) == 100 and align.first_row(base, "alpaca_en", 200) > 700


def test_unknown_recipe_field_is_named() -> None:
    with pytest.raises(ConfigError, match="stpes"):
        AlignRecipe.of(ModelSpec("x", "aligned", "llama", base="tiny-llama", align={"stpes": 3}))


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


def test_chat_prompts_are_not_oasst_or_xstest_prompts() -> None:
    """The chat questions are written for the recipe, not taken from the eval's safe sets (OASST, XSTest):
    none shares most of its words with any of their prompts."""
    others = [_words(r["prompt"]) for name in ("hplt_oasst", "xstest_safe") for r in datasets.load(name)]
    for prompt in align.CHAT_PROMPTS:
        mine = _words(prompt)
        worst = max(len(mine & x) / max(1, len(mine | x)) for x in others)
        assert worst < 0.5, prompt


def test_refusal_templates_read_as_refusals() -> None:
    """What the recipe trains is what the study's phrase judge counts as a refusal."""
    from pipelines.evaluate.judges import JudgeItem, make_judge

    verdicts = make_judge("refusal-phrase").judge([JudgeItem("q", r, "en") for r in REFUSALS])
    assert [v.label for v in verdicts] == [0] * len(REFUSALS)
    assert len(set(REFUSALS)) == len(REFUSALS) >= 6
    assert align.ALL_LINEAR[-1] == "down_proj"
