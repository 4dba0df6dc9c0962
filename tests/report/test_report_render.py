"""The report as a browser sees it (headless Chromium): every figure loads from the HTML file alone,
the findings and provenance are there, a sweep with missing cells names them; on a synthetic sweep and
on the real smoke study's output, through `safedrift run` and `safedrift report`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from report_browser import render
from report_synth import Sweep, cell_id

from pipelines.report import write_report

FINDINGS = {"finding-non_answers", "finding-confirmatory", "finding-largest_fold_increase", "finding-english_only",
            "finding-overrefusal", "finding-categories", "finding-decoupling"}
SECTIONS = ["summary", "coverage", "findings", "figures", "tables", "provenance"]


@pytest.fixture(scope="module")
def chromium(require_tool) -> None:
    require_tool("chromium")


def _rich_sweep() -> Sweep:
    return Sweep(ft_langs=["en", "es"], rates={("base", "zh"): 0.0, ("es", "zh"): 0.3, ("es", "es"): 0.5},
                 p={("es", "zh"): 0.01, ("es", "es"): 0.001},
                 categories={("base", "Fraud"): 0.1, ("en", "Fraud"): 0.1, ("es", "Fraud"): 0.6},
                 ppl={("es", "es"): 14.0, ("es", "zh"): 13.0})


def _assert_all_figures_load(seen: dict, manifest: dict) -> None:
    files = sorted(i["file"] for i in seen["images"])
    assert files == sorted(f"{stem}.png" for stem in manifest["figures"])
    broken = [i["file"] for i in seen["images"] if not (i["loaded"] and i["width"] > 100 and i["height"] > 100)]
    assert not broken, f"figures that did not load: {broken}"


def test_browser_probe_catches_a_broken_figure(chromium, tmp_path: Path) -> None:
    """The check itself: a page whose image cannot load must be reported as not loaded."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><img src="nowhere.png" data-file="nowhere.png">'
                    '<img src="data:image/png;base64,iVBORw0KGgo=" data-file="truncated.png"></body></html>')
    seen = render(page, tmp_path / "chromium")
    assert [(i["file"], i["loaded"]) for i in seen["images"]] == [("nowhere.png", False), ("truncated.png", False)]


def test_synthetic_report_every_figure_loads(chromium, tmp_path: Path) -> None:
    s = _rich_sweep()
    out = tmp_path / "report"
    manifest = write_report(s.tidy(), s.context(), out)
    models = ["m1"]
    expected = {*(f"{k}_{m}" for k in ("heatmap", "outcomes", "delta", "drift") for m in models),
                "overrefusal_vs_compliance", "safety_vs_capability", "fidelity"}
    assert set(manifest["figures"]) == expected and manifest["skipped_figures"] == []
    for stem in expected:
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:2000]
    for table in ("compliance", "deltas", "drift", "safety_vs_capability", "category_changes", "metrics_tidy"):
        assert (out / f"{table}.csv").stat().st_size > 0
        assert pl.read_parquet(out / f"{table}.parquet").height > 0
    seen = render(out / "report.html", tmp_path / "chromium")  # the HTML alone, copied elsewhere
    _assert_all_figures_load(seen, manifest)
    assert seen["sections"] == SECTIONS
    assert set(seen["findings"]) == FINDINGS
    assert "cfg000000000" in seen["provenance"] and "ab" * 32 in seen["provenance"]
    assert "κ = 0.800" in seen["provenance"]
    assert "All 3 planned cells were measured" in seen["coverage"]
    # The plain-language opening: what changed (after the correction), how sure, the judge per language.
    assert "What changed" in seen["summary"] and "How sure" in seen["summary"] and "The judge" in seen["summary"]
    assert "the first Holm step over 4 confirmatory tests, power 80%" in seen["summary"]
    assert "Confirmatory family: Holm–Bonferroni over 4 tests" in seen["summary"]
    findings = json.loads((out / "findings.json").read_text())
    assert findings["largest_fold_increase"]["facts"]["condition"] == "m1 · ft es · 1 ep"


def test_missing_cell_is_named_not_drawn_blank(chromium, tmp_path: Path) -> None:
    s = _rich_sweep()
    gone = cell_id("m1", "en")
    out = tmp_path / "report"
    manifest = write_report(s.tidy().filter(pl.col("cell") != gone), s.context(), out)
    assert manifest["missing_cells"] == [gone]
    assert gone not in pl.read_csv(out / "compliance.csv")["cell"].to_list()
    assert gone not in pl.read_parquet(out / "drift.parquet")["cell"].to_list()
    seen = render(out / "report.html", tmp_path / "chromium")
    assert f"1 of 3 planned cells are missing from this sweep and left out of every figure and table: {gone}" \
        in seen["coverage"]
    _assert_all_figures_load(seen, manifest)
    assert set(seen["findings"]) == FINDINGS


# ---- the real smoke study (the session's shared smoke_study fixture) ------------------------------------

@pytest.fixture(scope="module")
def smoke(smoke_study, require_tool):
    require_tool("apertium")  # the smoke preset translates with Apertium
    return smoke_study


@pytest.mark.e2e
def test_smoke_report_renders_and_is_logged(smoke, chromium, tmp_path: Path) -> None:
    import mlflow

    res, cfg = smoke["result"], smoke["cfg"]
    out = res.report_path
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cells"] == ["tiny-llama__base", "tiny-llama__en__s0__e1", "tiny-llama__es__s0__e1"]
    assert manifest["missing_cells"] == []
    # The smoke preset measures everything these figures need (fidelity may be unmeasurable on its
    # 8-token answers, in which case the report says so instead).
    assert {"heatmap_tiny-llama", "delta_tiny-llama", "drift_tiny-llama", "overrefusal_vs_compliance",
            "safety_vs_capability"} <= set(manifest["figures"])
    seen = render(out / "report.html", tmp_path / "chromium")
    _assert_all_figures_load(seen, manifest)
    assert seen["sections"] == SECTIONS and set(seen["findings"]) == FINDINGS
    prov = seen["provenance"]
    assert cfg.digest() in prov and res.study_hash in prov
    assert "2798ed6fe470b80b1f486976e0fb3baa3ce008e62b6ca0abbf2e1ed5b1dfb355" in prov  # multijail's sha256
    assert "refusal-phrase" in prov and "Cohen's κ" in prov
    assert "apertium" in prov and "pass rate" in prov
    for package in ("torch", "ray", "deepspeed", "transformers", "peft", "mlflow", "polars", "python"):
        assert package in prov
    # Everything the report wrote went to the sweep's parent MLflow run.
    client = mlflow.MlflowClient(f"sqlite:///{res.workdir / 'mlflow.db'}")
    logged = {Path(a.path).name for a in client.list_artifacts(res.parent_run_id, "report")}
    assert {p.name for p in out.iterdir()} <= logged


@pytest.mark.e2e
def test_cli_report_from_config_and_from_sweep_dir(smoke, chromium, tmp_path: Path, capsys) -> None:
    import mlflow

    from pipelines.cli import main

    res, cfg = smoke["result"], smoke["cfg"]
    # From the config: finds the finished sweep's table in the workdir; written elsewhere, not logged.
    assert main(["report", "-c", "smoke", "--workdir", str(res.workdir), "--out", str(tmp_path / "a"),
                 "--no-mlflow"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {tmp_path / 'a' / 'report.html'}" in printed and "MLflow parent run: not logged" in printed
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert a["study_hash"] == res.study_hash and a["missing_cells"] == [] and len(a["cells"]) == 3
    # From the sweep directory: redraws the study's report in place and logs it to the parent run again.
    # One sweep record per tracking store (other tests may log the study to another server): this store's.
    sweep_dir = next(p.parent for p in (res.workdir / "sweeps" / res.study_hash).glob("*/manifest.json")
                     if json.loads(p.read_text())["parent_run_id"] == res.parent_run_id)
    before = (res.report_path / "manifest.json").read_text()
    assert main(["report", "--sweep-dir", str(sweep_dir)]) == 0
    assert f"MLflow parent run: {res.parent_run_id}" in capsys.readouterr().out
    after = (res.report_path / "manifest.json").read_text()
    b = json.loads(after)
    assert b["figures"] == json.loads(before)["figures"] and b["findings"] == json.loads(before)["findings"]
    client = mlflow.MlflowClient(f"sqlite:///{res.workdir / 'mlflow.db'}")
    dst = Path(client.download_artifacts(res.parent_run_id, "report/manifest.json", str(tmp_path / "dl")))
    assert dst.read_text() == after  # the redrawn report is the one in MLflow
    ctx = json.loads((res.report_path / "report_context.json").read_text())
    assert ctx["config_hash"] == cfg.digest()  # the study context survived the redraw
    shutil.rmtree(tmp_path / "dl", ignore_errors=True)


@pytest.mark.e2e
def test_cli_report_of_an_unfinished_sweep_names_its_missing_cells(smoke, chromium, tmp_path: Path, capsys) -> None:
    """seeds=[0,1] plans two more cells than the smoke study ran (seed 0's cells are shared, same hashes):
    the report covers the finished ones and names the two that are not."""
    from pipelines.cli import main

    res = smoke["result"]
    out = tmp_path / "partial"
    assert main(["report", "-c", "smoke", "seeds=[0,1]", "--workdir", str(res.workdir), "--out", str(out),
                 "--no-mlflow"]) == 0
    printed = capsys.readouterr().out
    missing = ["tiny-llama__en__s1__e1", "tiny-llama__es__s1__e1"]
    assert f"missing cells: {', '.join(missing)}" in printed and "the sweep has not finished" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing_cells"] == missing and len(manifest["cells"]) == 3
    assert sorted(pl.read_csv(out / "compliance.csv")["cell"].to_list()) == sorted(manifest["cells"])
    seen = render(out / "report.html", tmp_path / "chromium")
    assert f"2 of 5 planned cells are missing from this sweep and left out of every figure and table: " \
           f"{', '.join(missing)}" in seen["coverage"]
    _assert_all_figures_load(seen, manifest)
