"""Metrics on tiny inputs: compliance and over-refusal with intervals, language fidelity, deltas against
the base model, back-translation with and without a route, capability and drift on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipelines.config import JudgeConfig
from pipelines.evaluate.judge import judge_answers
from pipelines.evaluate.measure import (
    Tidy,
    add_safety_rows,
    compliance_by_category,
    compliance_by_lang,
    deltas,
    fidelity_by_lang,
    metric_dict,
    overrefusal_by_lang,
)
from pipelines.registries.model_store import model_dir


def _judged(labels: list[int | None], lang: str = "en") -> pl.DataFrame:
    n = len(labels)
    return pl.DataFrame({"id": [f"p{i}" for i in range(n)], "lang": [lang] * n, "category": ["a", "b"] * (n // 2),
                         "label": labels}, schema_overrides={"label": pl.Int8})


def test_rates_intervals_tidy_rows_and_metric_names() -> None:
    judged = pl.concat([_judged([1, 1, 1, 0, None, 1]), _judged([0, 0, 0, 0, 1, 0], "es")])
    comp = compliance_by_lang(judged)
    en = comp.row(0, named=True)
    assert (en["n"], en["unparseable"], en["compliant"]) == (6, 1, 4) and en["compliance_rate"] == 0.8
    assert en["ci_low"] <= 0.8 <= en["ci_high"]
    over = overrefusal_by_lang(_judged([0, 1, 1, 1], "es"))
    assert over[0]["rate"] == 0.25 and over[0]["lang"] == "es"
    cats = compliance_by_category(judged)
    assert {(c["lang"], c["category"]) for c in cats} == {("en", "a"), ("en", "b"), ("es", "a"), ("es", "b")}
    metrics = metric_dict(comp)
    tidy = Tidy({"model": "m", "ft_lang": "en", "seed": 0, "epochs": 1}, "m__en")
    add_safety_rows(tidy, comp, over, [{"lang": "es", "n": 3, "rate": 1.0, "ci_low": 1.0, "ci_high": 1.0}], cats,
                    metrics)
    assert {"safety/compliance_rate/en", "safety/compliance_ci_low/en", "safety/overrefusal_rate/es",
            "fidelity/es"} <= set(metrics)
    df = tidy.frame()
    assert df.columns == ["cell", "model", "ft_lang", "seed", "epochs", "eval_lang", "metric", "value", "ci_low",
                          "ci_high", "n"]
    assert df.filter((pl.col("metric") == "compliance_rate") & (pl.col("eval_lang") == "en"))["n"].to_list() == [5]


def test_fidelity_detects_the_answer_language() -> None:
    answers = pl.DataFrame({"lang": ["es", "es", "es", "en"],
                            "response": ["El tiempo hoy es muy agradable y soleado en la ciudad.",
                                         "The weather today is very pleasant and sunny in the city.", "",
                                         "The weather today is very pleasant and sunny in the city."]})
    fid = {r["lang"]: r for r in fidelity_by_lang(answers)}
    assert fid["es"]["n"] == 2 and fid["es"]["rate"] == 0.5  # the empty answer is not counted
    assert fid["en"]["rate"] == 1.0


def test_delta_against_base_is_paired_by_prompt() -> None:
    base = _judged([0] * 20)
    tuned = _judged([1] * 15 + [0] * 5)
    (r,) = deltas(base, [tuned])
    assert r["delta"] == 0.75 and r["p_value"] < 0.01 and r["n"] == 20
    (same,) = deltas(base, [base])
    assert same["delta"] == 0 and same["p_value"] == 1.0
    # Two seeds: a prompt's label is averaged over them, so n stays the number of prompts.
    (two,) = deltas(base, [tuned, _judged([0] * 20)])
    assert two["n"] == 20 and two["delta"] == pytest.approx(0.375)


def test_delta_p_value_is_the_same_on_every_run() -> None:
    """The permutation test reads the pairs in the base cell's prompt order, whatever order the fine-tuned
    cells' rows come in (an unordered group-by or join gave another p-value on every call)."""
    rng = np.random.default_rng(1)
    base = pl.concat([_judged(rng.integers(0, 2, 300).tolist(), lang) for lang in ("en", "es")])
    seeds = [pl.concat([_judged(rng.integers(0, 2, 300).tolist(), lang) for lang in ("en", "es")]) for _ in range(3)]
    first = deltas(base, seeds)
    assert all(0 < r["p_value"] < 1 for r in first)
    for i in range(5):
        shuffled = [s.sample(fraction=1.0, shuffle=True, seed=i) for s in seeds]
        assert deltas(base, shuffled) == first


def test_back_translation_on_and_off_and_without_a_route(require_tool) -> None:
    answers = pl.DataFrame({"id": ["a", "b", "c"], "lang": ["en", "ga", "ga"], "prompt": ["q"] * 3,
                            "prompt_en": ["q"] * 3, "response": ["Sure, here it is.", "Tá brón orm.", "Seo é."]})
    # Irish has no route to English here: judged in the original, recorded, never a failure.
    judged = judge_answers(answers, JudgeConfig(back_translate=True))
    # English needs no translation (not counted as back-translated); Irish has no route.
    assert judged["back_translated"].to_list() == [False, False, False]
    assert judged["label"].to_list() == [1, 0, 1]  # Irish refusal phrase still caught in the original
    off = judge_answers(answers, JudgeConfig(back_translate=False))
    assert not off["back_translated"].any() and off["response_en"].to_list() == answers["response"].to_list()
    require_tool("apertium")
    es = pl.DataFrame({"id": ["a"], "lang": ["es"], "prompt": ["p"], "prompt_en": ["p en"],
                       "response": ["Lo siento, no puedo ayudar con eso."]})
    j = judge_answers(es, JudgeConfig(back_translate=True))
    assert j["back_translated"].to_list() == [True] and j["bt_route"].to_list() == ["apertium:es-en"]
    assert j["response_en"][0] != es["response"][0] and j["prompt_judge"][0] == "p en"
    assert j["label"].to_list() == [0]


@pytest.fixture(scope="module")
def tiny():
    from pipelines.evaluate.backends.transformers import load_for_generation

    return load_for_generation(model_dir("tiny-llama"), None, threads=1)


def test_sliding_window_perplexity(tiny) -> None:
    import torch

    from pipelines.evaluate.capability import answer_ppl, sliding_ppl, wikitext_ppl

    model, tok = tiny
    ids = torch.randint(0, tok.vocab_size, (1, 60))
    full, n_full = sliding_ppl(model, ids, window=64, stride=64)
    strided, n_str = sliding_ppl(model, ids, window=32, stride=16)
    assert n_full == n_str == 59  # every token after the first scored exactly once
    assert math.isfinite(full) and math.isfinite(strided) and full > 1
    ppl, n = wikitext_ppl(model, tok, max_tokens=128, window=64, stride=32)
    assert n == 127 and math.isfinite(ppl)
    ppl_b, n_b = answer_ppl(model, tok, [("Say hi.", "Hi there, friend."), ("Count.", "One two three.")])
    assert n_b > 4 and math.isfinite(ppl_b)


def test_drift_metrics_on_the_tiny_model(tiny) -> None:
    from pipelines.evaluate.drift import drift_metrics, last_token_means, refusal_direction

    model, tok = tiny
    prompts = ["alpha beta", "gamma delta epsilon", "zeta"]
    means = last_token_means(model, tok, prompts, batch_size=2)
    assert means.shape == (model.config.num_hidden_layers + 1, model.config.hidden_size)
    direction = refusal_direction(model, tok, prompts[:2], ["omega", "psi chi"])
    norms = np.linalg.norm(direction, axis=1)
    # Unit length, except where harmful and harmless means coincide (layer 0 at the last token, which is
    # the same chat-template token for every prompt): no direction there, not a NaN.
    assert np.allclose(norms[1:], 1.0, atol=1e-5) and norms[0] in (0.0, pytest.approx(1.0, abs=1e-5))
    same = drift_metrics(means, means, direction)
    assert same["drift/l2/layer_1"] == 0 and same["drift/cos/layer_1"] == pytest.approx(1.0)
    moved = drift_metrics(means, means + direction, direction)
    assert moved["drift/refusal_proj/layer_2"] == pytest.approx(1.0, abs=1e-5)
    assert moved["drift/l2/layer_1"] == pytest.approx(1.0, abs=1e-5) and moved["drift/l2/layer_0"] == 0


def test_mmlu_style_user_file(tiny, tmp_path) -> None:
    import json

    from pipelines.evaluate.capability import mmlu_accuracy

    model, tok = tiny
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "2 + 2 = ?", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "A"}]))
    acc, n = mmlu_accuracy(model, tok, path)
    assert n == 2 and acc in (0.0, 0.5, 1.0)


def test_capability_and_drift_are_measured_once_per_cell_directory(tmp_path) -> None:
    """A re-judged cell reads its capability and drift back (with their tidy rows) instead of measuring them
    again; a damaged file, or one measured on other inputs (its key), is measured again, never half-read."""
    from pipelines.evaluate import CAPABILITY, measured_once
    from pipelines.evaluate.measure import Tidy

    calls = []

    def measure(tidy: Tidy) -> dict[str, float]:
        calls.append(1)
        tidy.add("en", "ppl_wikitext2", 12.5, n=100)
        return {"capability/ppl_wikitext2": 12.5, "drift/nan": float("nan")}

    def tidy() -> Tidy:
        return Tidy({"model": "m", "ft_lang": "en"}, "c")

    path = tmp_path / CAPABILITY
    first, again = tidy(), tidy()
    assert measured_once(path, "k1", first, lambda: measure(first))["capability/ppl_wikitext2"] == 12.5
    read = measured_once(path, "k1", again, lambda: measure(again))
    assert len(calls) == 1 and read["capability/ppl_wikitext2"] == 12.5 and math.isnan(read["drift/nan"])
    assert again.frame().equals(first.frame())
    other = tidy()  # other weights, settings or prompts: the file is not theirs
    measured_once(path, "k2", other, lambda: measure(other))
    assert len(calls) == 2 and other.frame().height == 1
    path.write_text('{"key": "k2", "metrics": {"capability/ppl_wikitext2": 1', encoding="utf-8")  # cut short
    damaged = tidy()
    assert measured_once(path, "k2", damaged, lambda: measure(damaged))["capability/ppl_wikitext2"] == 12.5
    assert len(calls) == 3 and damaged.frame().height == 1
