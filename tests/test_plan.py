"""`safedrift plan` (issue #17 point 4): the dry run of the paper preset — its facts, its GPU-hours
estimate with the figures it rests on, and a failure naming the fix for each thing that would fail later.
Runs the real CLI in-process; nothing is mocked: the staged weights are real directories the model
registry's lookup (SAFEDRIFT_MODEL_DIR/<alias>/config.json) finds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.registries.models import hub_facts

GATED = ["llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "gemma-3-1b-it", "gemma-3-4b-it"]


@pytest.fixture
def no_token(monkeypatch, tmp_path: Path) -> Path:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token file, an empty hub cache
    return tmp_path


@pytest.fixture
def staged(no_token: Path, monkeypatch) -> Path:
    root = no_token / "models"
    for alias in GATED:
        (root / alias).mkdir(parents=True)
        (root / alias / "config.json").write_text("{}")
    monkeypatch.setenv("SAFEDRIFT_MODEL_DIR", str(root))
    return root


def run_plan(capsys, *args: str) -> tuple[int, str]:
    rc = main(["plan", *args])
    return rc, capsys.readouterr().out


def test_paper_plan_carries_every_fact_and_fits_the_budget(staged, capsys, monkeypatch) -> None:
    # A dry run starts no Ray and loads no model: either would fail here.
    import ray
    import transformers

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("safedrift plan must not start Ray or load a model")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    rc, out = run_plan(capsys, "-c", "paper", "--json")
    plan = json.loads(out)
    assert rc == 0, plan["problems"]
    assert {"cells", "splits", "judge", "resources", "gpu_hours"} <= set(plan)
    assert plan["cells"]["total"] == 6 * (9 * 2 * 3 + 1) == len(plan["cells"]["ids"])
    kinds = {(s["split"], s["lang"]) for s in plan["splits"]}
    assert {(k, lang) for k in ("benign", "eval", "eval_safe", "benign_heldout")
            for lang in ("en", "zh", "ga", "tl")} <= kinds
    assert all(s["rows"] > 0 for s in plan["splits"])  # the held-out split too (it was empty before)
    heldout = {s["lang"]: s["rows"] for s in plan["splits"] if s["split"] == "benign_heldout"}
    assert heldout["en"] == 99 and heldout["zh"] == 99
    assert any(s["route"] == "nllb:en-ga" for s in plan["splits"])
    assert plan["judge"]["name"] == "sorry-bench" and plan["judge"]["back_translation"]["zh"] == "nllb:zh-en"
    assert "NOT present locally" in plan["translators"]["nllb"]  # planned, but said plainly
    g = plan["gpu_hours"]
    assert g["recorded"]["lora_tokens_per_s"] == 49_409 and "RESULTS.md" in g["recorded"]["source"]
    assert g["assumed"]["vllm_decode_tokens_per_s_at_1.24b"] > 0
    assert abs(sum(g["by_stage"].values()) - g["busy_h100_hours"]) < 0.1
    assert abs(sum(g["held_by_part"].values()) - g["held_h100_hours"]) < 0.1
    assert g["within_goal"] == (g["held_h100_hours"] <= 32)
    assert plan["resources"]["finetune"]["gpu_memory_upper_bound_gib"]["gemma-3-4b-it"] < 80
    assert any("SORRY-Bench" in d for d in plan["deviations_from_study"])


def test_text_plan_shows_the_figures(staged, capsys) -> None:
    rc, out = run_plan(capsys, "-c", "paper")
    assert rc == 0
    assert "GPU-hours (H100)" in out and "assumed (not measured)" in out and "49,409 tokens/s" in out
    assert "no problems found" in out


def test_gated_model_without_weights_or_token_fails_naming_the_fix(no_token, capsys, monkeypatch) -> None:
    monkeypatch.delenv("SAFEDRIFT_MODEL_DIR", raising=False)
    rc, out = run_plan(capsys, "-c", "paper", "--json")
    problems = json.loads(out)["problems"]
    assert rc == 2
    named = {a for a in GATED if any(a in p["what"] for p in problems)}
    assert named == set(GATED)  # qwen3 is not gated: fetched on first use, no problem
    assert all("SAFEDRIFT_MODEL_DIR" in p["fix"] and "HF_TOKEN" in p["fix"] for p in problems)


def test_a_token_is_enough_and_never_printed(no_token, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_plan_test_not_a_real_token")
    rc, out = run_plan(capsys, "-c", "paper", "--json")
    assert rc == 0 and "hf_plan_test_not_a_real_token" not in out
    assert json.loads(out)["hub_token"] == "present"


def test_empty_heldout_split_fails(staged, capsys) -> None:
    rc, out = run_plan(capsys, "-c", "paper", "data.benign.n=999", "--json")
    problems = json.loads(out)["problems"]
    assert rc == 2
    assert any("benign_heldout" in p["what"] and "data.benign.n" in p["what"] for p in problems)


def test_missing_route_fails(staged, capsys) -> None:
    rc, out = run_plan(capsys, "-c", "paper", "translate.prefer=[reference,apertium]", "--json")
    assert rc == 2
    assert any("no translation route" in p["what"] for p in json.loads(out)["problems"])


def test_a_cell_no_node_can_hold_fails(staged, capsys) -> None:
    rc, out = run_plan(capsys, "-c", "paper", "--gpu", "A10G", "--json")
    problems = json.loads(out)["problems"]
    assert rc == 2
    assert any("no node can hold" in p["what"] and "max_length" in p["fix"] for p in problems)
    rc, out = run_plan(capsys, "-c", "paper", "--node-cpus", "2", "--json")
    assert rc == 2 and any("holds none" in p["what"] for p in json.loads(out)["problems"])


def test_multimodal_lora_targets_stay_in_the_language_model() -> None:
    import re

    from pipelines.registries.models import peft_target_modules

    target = peft_target_modules("gemma-3-4b-it")
    assert isinstance(target, str)  # a str is a regex for peft (re.fullmatch), a list only suffixes
    assert re.fullmatch(target, "model.language_model.layers.3.self_attn.q_proj")
    assert not re.fullmatch(target, "model.vision_tower.vision_model.encoder.layers.3.self_attn.q_proj")
    assert peft_target_modules("gemma-3-1b-it") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert hub_facts("qwen3-4b").thinking and not hub_facts("llama-3.2-1b-instruct").thinking


def test_the_plan_says_what_it_measured_assumed_and_would_bill(staged) -> None:
    """Issue #29, point 4: each figure with its source; translation counted where it runs; the judge's
    back-translation at NLLB's batch there (16); busy and held (billed) GPU-hours apart."""
    from pipelines.plan import ASSUMED, _split_rows, gpu_hours, served_judge
    from pipelines.presets import load_config

    cfg, deploy = served_judge(load_config("paper"))
    splits, _ = _split_rows(cfg, [])
    g = gpu_hours(cfg, splits, deploy, result=staged / "none.json")
    assert g["measured"] == ["lora_tokens_per_s"]  # one measured figure today, said so
    assert all(v["source"] == "assumed" for k, v in g["figures"].items() if k != "lora_tokens_per_s")
    assert g["translate_runs_on"] == "GPU" and g["by_stage"]["translate"] > 0  # NLLB actors get GPUs now
    cells = len({c for c in g["by_model"]}) * 55
    want = cells * g["answers_back_translated_per_cell"] * 200 / ASSUMED["nllb_tokens_per_s_batch16"] / 3600
    assert abs(g["by_stage"]["back_translate"] - want) < 0.01
    # Held: evaluation workers wait on the judge with their GPU, the judge's replicas are held throughout.
    held = g["held_by_part"]
    assert held["judge_replicas"] >= g["by_stage"]["judge"] + g["by_stage"]["back_translate"] - 0.01
    assert g["held_h100_hours"] > g["busy_h100_hours"]
    assert held["evaluation_workers"] >= g["by_stage"]["generate"] + g["by_stage"]["judge"]
    assert held["idle_nodes"] == round(ASSUMED["gpu_nodes"] * ASSUMED["idle_timeout_s"] * 2 / 3600, 2)


def test_a_recorded_device_check_replaces_the_assumptions_it_measured(staged) -> None:
    from pipelines.plan import _split_rows, gpu_hours, served_judge
    from pipelines.presets import load_config

    result = staged / "device_check.json"
    result.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "date": "2026-12-07",
                                  "nllb_batch16": {"tokens_per_s": 5000.0}, "nllb_batch64": {"tokens_per_s": 16000.0},
                                  "judge_prefill": {"tokens_per_s": 40000.0}}))
    cfg, deploy = served_judge(load_config("paper"))
    splits, _ = _split_rows(cfg, [])
    before = gpu_hours(cfg, splits, deploy, result=staged / "none.json")
    after = gpu_hours(cfg, splits, deploy, result=result)
    assert after["measured"] == ["judge_prefill_tokens_per_s_at_7.24b", "lora_tokens_per_s", "nllb_tokens_per_s",
                                 "nllb_tokens_per_s_batch16"]
    assert "H100" in after["figures"]["nllb_tokens_per_s_batch16"]["source"]
    assert abs(after["by_stage"]["back_translate"] * 2 - before["by_stage"]["back_translate"]) < 0.02


def test_the_device_check_runs_at_tiny_shapes_and_the_plan_reads_its_json(staged, tmp_path) -> None:
    """Issue #29, what must hold 5: benchmarks/gpu/device_check.py runs on a CPU at tiny shapes (no GPU is
    lent to this task: its real result is not recorded yet) and writes the JSON the plan reads."""
    import importlib.util

    from pipelines.plan import _split_rows, gpu_hours, served_judge
    from pipelines.presets import load_config

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "device_check.py"
    spec = importlib.util.spec_from_file_location("device_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "device_check.json"
    res = module.main(["--tiny", "--device", "cpu", "--out", str(out)])
    assert set(res["generation"]) == {"llama-3.2-1b", "qwen3-4b"} and res["lora_step"]["finite"]
    assert res["nllb_batch16"]["batch"] == 16 and res["nllb_batch64"]["batch"] == 64
    cfg, deploy = served_judge(load_config("paper"))
    g = gpu_hours(cfg, _split_rows(cfg, [])[0], deploy, result=out)
    assert {"nllb_tokens_per_s_batch16", "judge_prefill_tokens_per_s_at_7.24b"} <= set(g["measured"])
    assert g["figures"]["nllb_tokens_per_s_batch16"]["value"] == res["nllb_batch16"]["tokens_per_s"]
