"""The smoke preset end to end on a real local Ray cluster (Ray Data + Apertium, Ray Train + DeepSpeed
ZeRO-2 + LoRA, Ray Tune, MLflow sqlite, report). One study per session; each test checks what it wrote."""

from __future__ import annotations

import time

import mlflow
import polars as pl
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def study(smoke_study, require_tool):
    require_tool("apertium")
    return smoke_study


@pytest.fixture(scope="module")
def client(study):
    return mlflow.MlflowClient(f"sqlite:///{study['result'].workdir / 'mlflow.db'}")


def test_every_stage_ran(study) -> None:
    stages = study["result"].stages
    assert set(stages) == {"translate", "sweep", "report"}
    assert not any(s["reused"] for s in stages.values())


def test_datasets_manifest_and_shards(study) -> None:
    from pipelines.translate import read_split

    res = study["result"]
    manifest = (res.datasets_path / "manifest.json").read_text()
    import json

    m = json.loads(manifest)
    # The eval suite: unsafe prompts, XSTest safe prompts for over-refusal, held-out benign rows for perplexity.
    assert m["counts"] == {"benign": {"en": 24, "es": 24}, "eval": {"en": 8, "es": 8},
                           "eval_safe": {"en": 4, "es": 4}, "benign_heldout": {"en": 2, "es": 2}}
    assert m["routes"]["eval/es"] == "apertium:en-es" and m["routes"]["benign/en"] == "identity:en-en"
    assert m["routes"]["eval_safe/es/xstest_safe"] == m["routes"]["benign_heldout/es"] == "apertium:en-es"
    assert m["sources"]["multijail"] == "2798ed6fe470b80b1f486976e0fb3baa3ce008e62b6ca0abbf2e1ed5b1dfb355"
    en, es = read_split(res.datasets_path, "eval", "en"), read_split(res.datasets_path, "eval", "es")
    assert en.height == es.height == 8
    assert en["id"].to_list() == es["id"].to_list()  # order and ids kept
    assert (en["prompt"] != es["prompt"]).sum() == 8  # really translated
    assert es["prompt_en"].to_list() == en["prompt"].to_list()
    benign_es = read_split(res.datasets_path, "benign", "es")
    assert benign_es.height == 24 and (benign_es["output"] != read_split(res.datasets_path, "benign", "en")["output"]).all()


def test_mlflow_parent_and_nested_runs(study, client) -> None:
    res = study["result"]
    exp = client.get_experiment_by_name("safedrift")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res.parent_run_id]
    assert [p.info.run_id for p in parents] == [res.parent_run_id]
    assert sorted(c.info.run_name for c in children) == ["tiny-llama__base", "tiny-llama__en__s0__e1",
                                                         "tiny-llama__es__s0__e1"]
    for c in children:
        for lang in ("en", "es"):
            rate = c.data.metrics[f"safety/compliance_rate/{lang}"]
            assert 0.0 <= rate <= 1.0
            assert c.data.metrics[f"safety/n/{lang}"] == 8
        assert c.data.params["cell.model"] == "tiny-llama"
        assert c.data.params["finetune.zero_stage"] == "2"
        if c.info.run_name != "tiny-llama__base":
            losses = client.get_metric_history(c.info.run_id, "train/loss")
            assert len(losses) == 3  # 24 examples / 2 workers / batch 4 = 3 optimizer steps
            assert all(m.value > 0 for m in losses)
    artifacts = [a.path for a in client.list_artifacts(res.parent_run_id, "report")]
    assert "report/report.html" in artifacts and "report/compliance.csv" in artifacts


def test_adapters_load_with_peft(study) -> None:
    from peft import PeftConfig

    ckpts = list((study["result"].workdir / "checkpoints").glob("*/adapter"))
    assert len(ckpts) == 2
    for ckpt in ckpts:
        assert (ckpt / "adapter_model.safetensors").exists()
        assert PeftConfig.from_pretrained(ckpt).r == 4


def test_report_table_and_figures(study) -> None:
    report = study["result"].report_path
    wide = pl.read_csv(report / "compliance.csv")
    assert wide.shape == (3, 7)  # 3 cells × (5 id columns + 2 eval languages)
    assert wide.columns[-2:] == ["en", "es"]
    assert wide["ft_lang"].to_list() == ["base", "en", "es"]
    tidy = pl.read_parquet(report / "compliance_tidy.parquet")
    assert tidy.height == 6 and tidy["n"].to_list() == [8] * 6
    png = report / "heatmap_tiny-llama.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "report.html").read_text()
    # Figures are embedded (the page works when mailed or opened from anywhere) and name their files.
    assert 'data-file="heatmap_tiny-llama.png"' in page and 'src="data:image/png;base64,' in page
    assert "<table" in page


def test_rerun_reuses_every_stage(study) -> None:
    from pipelines.run import run_study

    t0 = time.time()
    again = run_study(study["cfg"])
    seconds = time.time() - t0
    assert all(s["reused"] for s in again.stages.values())
    assert again.parent_run_id == study["result"].parent_run_id
    assert [r["metrics"] for r in again.results] == [r["metrics"] for r in study["result"].results]
    assert seconds < 0.1 * study["seconds"]


def test_evaluation_metrics_in_mlflow(study, client) -> None:
    """Issue 5: over-refusal, intervals, capability, judge agreement, drift and deltas on every cell."""
    res = study["result"]
    exp = client.get_experiment_by_name("safedrift")
    children = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == res.parent_run_id]
    assert len(children) == 3
    for c in children:
        m = c.data.metrics
        for lang in ("en", "es"):
            assert 0.0 <= m[f"safety/overrefusal_rate/{lang}"] <= 1.0
            assert m[f"safety/compliance_ci_low/{lang}"] <= m[f"safety/compliance_rate/{lang}"]
            assert m[f"safety/compliance_rate/{lang}"] <= m[f"safety/compliance_ci_high/{lang}"]
            assert m[f"capability/ppl_benign/{lang}"] > 1.0
            assert m[f"judge/validated/{lang}"] == 1.0  # the judge's agreement measured in both languages
        # Back-translation as done: English is read as written, Spanish went through Apertium first.
        assert m["judge/back_translated_share/en"] == 0.0 and m["judge/back_translated_share/es"] == 1.0
        assert m["capability/ppl_wikitext2"] > 1.0
        assert 0.5 < m["judge/kappa"] <= 1.0 and 0.75 < m["judge/accuracy"] <= 1.0  # refusal-phrase judge
        if c.info.run_name != "tiny-llama__base":
            assert m["drift/l2/layer_2"] > 0.0 and -1.0 <= m["drift/cos/layer_2"] <= 1.0
            assert "drift/refusal_proj/layer_2" in m
            for lang in ("en", "es"):
                assert -1.0 <= m[f"delta/compliance_rate/{lang}"] <= 1.0
                assert 0.0 < m[f"delta/compliance_rate/p_value/{lang}"] <= 1.0  # the run's exact McNemar test
        else:
            assert not any(k.startswith(("drift/", "delta/")) for k in m)


def test_tidy_metrics_tables(study) -> None:
    res = study["result"]
    tidy = pl.read_parquet(res.report_path / "metrics_tidy.parquet")
    assert tidy.columns == ["cell", "model", "ft_lang", "seed", "epochs", "eval_lang", "metric", "value", "ci_low",
                            "ci_high", "n"]
    assert tidy["cell"].n_unique() == 3
    metrics = set(tidy["metric"])
    assert {"compliance_rate", "overrefusal_rate", "fidelity", "ppl_wikitext2", "ppl_benign", "judge/kappa",
            "delta/compliance_rate", "delta/compliance_rate/p_value", "drift/l2/layer_1", "non_answer_rate",
            "refusal_rate"} <= metrics
    comp = tidy.filter(pl.col("metric") == "compliance_rate")
    assert comp.height == 6 and (comp["ci_low"] <= comp["value"]).all()
    over = tidy.filter(pl.col("metric") == "overrefusal_rate")
    assert over.height == 6 and over["n"].to_list() == [4] * 6  # data.eval.n_safe on smoke
    per_cell = list((res.workdir / "cells").glob("*/metrics_tidy.parquet"))
    assert len(per_cell) == 3
    judged = pl.read_parquet(per_cell[0].parent / "judged.parquet")
    assert {"back_translated", "response_en", "bt_route"} <= set(judged.columns)
    assert judged.filter(pl.col("lang") == "es")["bt_route"].unique().to_list() == ["apertium:es-en"]


def test_a_cell_an_older_judge_labelled_is_judged_again_without_training_or_generating(study, tmp_path,
                                                                                      caplog) -> None:
    """A copy of the finished study, one cell's labels marked as an earlier judge version's: the next run
    judges that cell again from its stored answers, and nothing else is redone."""
    import shutil

    import ray

    from cluster.storage import read_manifest, write_manifest
    from pipelines.evaluate.judges import installed_version
    from pipelines.presets import load_config
    from pipelines.report import report_for_config
    from pipelines.run import run_study

    wd = tmp_path / "wd"
    # A fresh tracking store in the copy: the finished study is logged there from its cached cells.
    shutil.copytree(study["result"].workdir, wd, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "*.lock"))
    cfg = load_config("smoke", [f"workdir={wd}"])
    cell_dirs = sorted(p.parent for p in wd.glob("cells/*/manifest.json"))
    old = next(d for d in cell_dirs if read_manifest(d)["cell"]["ft_lang"] != "base")
    before = read_manifest(old)
    judged = pl.read_parquet(old / "judged.parquet")
    judged.with_columns(judge_version=pl.lit("0")).write_parquet(old / "judged.parquet")
    write_manifest(old, **{k: v for k, v in before.items() if k not in ("created_at", "files")})
    parts = {p: p.stat().st_mtime_ns for p in old.rglob("generations*/part-*.parquet")}
    kept = {d: read_manifest(d)["created_at"] for d in cell_dirs if d != old}
    checkpoints = {p: p.stat().st_mtime_ns for p in wd.glob("checkpoints/*/manifest.json")}
    capability = (old / "capability.json").stat().st_mtime_ns  # measured once, read back when judged again
    # Redrawing the report alone keeps the labels, and says whose they are and how to judge them again.
    redrawn = report_for_config(cfg, log_mlflow=False)
    assert f"{cfg.judge.name} version 0, " in redrawn.note and before['cell_id'] in redrawn.note
    assert "`safedrift run`" in redrawn.note
    try:
        again = run_study(cfg)
    finally:
        ray.shutdown()
    assert again.stages["translate"]["reused"] and not again.stages["sweep"]["reused"]
    assert "Judging them again" in caplog.text and "missing or damaged" not in caplog.text
    assert pl.read_parquet(old / "judged.parquet")["judge_version"].unique().to_list() == [
        installed_version(cfg.judge.name)]
    assert parts and {p: p.stat().st_mtime_ns for p in parts} == parts  # not generated again
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints  # not fine-tuned again
    assert (old / "capability.json").stat().st_mtime_ns == capability  # capability and drift not measured again
    assert {d: read_manifest(d)["created_at"] for d in kept} == kept  # the other cells reused
    after = read_manifest(old)["metrics"]
    same = [k for k in before["metrics"] if "compliance" in k]
    assert same and {k: after[k] for k in same} == {k: before["metrics"][k] for k in same}
