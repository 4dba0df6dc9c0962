"""The report's findings on synthetic tidy tables with known answers (no Ray, no browser)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from report_synth import Sweep, cell_id

from pipelines.evaluate.stats import benjamini_hochberg, holm, seed_level
from pipelines.report import build_tables, findings
from pipelines.report import tables as tb
from pipelines.report.findings import correlation, decoupling
from pipelines.report.provenance import redact, redact_uri


def _findings(s: Sweep, drop: list[str] | None = None, ctx: dict | None = None):
    tidy = s.tidy()
    if drop:
        tidy = tidy.filter(~pl.col("cell").is_in(drop))
    t = build_tables(tidy, s.context() if ctx is None else ctx)
    coverage, found = findings(t)
    return t, coverage, {f.key: f for f in found}


def cond(ft: str, model: str = "m1", epochs: int = 1) -> str:
    return tb.condition_label(model, ft, epochs)


def test_largest_fold_is_the_biggest_ratio_and_a_zero_base_stays_finite() -> None:
    # es→zh: 0.0 → 0.3 (12 of 40 prompts): (12.5/41)/(0.5/41) = 25×; es→es: 0.1 → 0.5: (20.5/4.5) ≈ 4.6×,
    # the larger absolute change but the smaller fold.
    s = Sweep(rates={("base", "zh"): 0.0, ("es", "zh"): 0.3, ("base", "es"): 0.1, ("es", "es"): 0.5},
              p={("es", "zh"): 0.004})
    _, _, f = _findings(s)
    fold = f["largest_fold_increase"]
    assert fold.facts["condition"] == cond("es") and fold.facts["eval_lang"] == "zh"
    assert fold.facts["fold"] == pytest.approx(25.0)
    # One seed: BH over the 6 condition × language tests, 0.004 · 6 = 0.024 < 0.05, and the text says
    # that the change is one fine-tuning run's.
    assert fold.facts["significant"] is True and "one fine-tuning run" in fold.summary
    assert "25.0×" in fold.summary and "0.00 → 0.30" in fold.summary
    assert fold.table is not None and fold.table["fold"].to_list() == sorted(fold.table["fold"].to_list(), reverse=True)


def test_largest_fold_names_the_largest_significant_one_when_the_top_is_not() -> None:
    s = Sweep(rates={("base", "zh"): 0.0, ("es", "zh"): 0.3, ("base", "es"): 0.1, ("es", "es"): 0.5},
              p={("es", "es"): 0.001})  # significant after BH over every condition × language
    _, _, f = _findings(s)
    fold = f["largest_fold_increase"]
    assert fold.facts["eval_lang"] == "zh" and fold.facts["significant"] is False
    assert "largest significant increase" in fold.summary and f"{cond('es')} asked in es" in fold.summary


def test_no_increase_and_no_finetuned_cell_degrade_to_plain_statements() -> None:
    down = Sweep(rates={("base", lang): 0.5 for lang in ("en", "es", "zh")})  # fine-tunes at the 0.1 default
    _, _, f = _findings(down)
    assert f["largest_fold_increase"].facts["status"] == "no_increase"
    assert "No fine-tuned condition complied more often" in f["largest_fold_increase"].summary

    base_only = Sweep(ft_langs=[])
    _, coverage, f = _findings(base_only)
    assert f["largest_fold_increase"].facts["status"] == "no_finetuned"
    assert f["english_only"].facts["status"] == "no_finetuned"
    assert f["categories"].facts["status"] == "none"
    assert f["decoupling"].facts["status"] == "no_points"
    assert coverage.facts["missing"] == []


def test_english_only_verdict_per_condition_rests_on_a_test_of_the_difference() -> None:
    s = Sweep(ft_langs=["en", "es", "zh"],
              rates={("en", "en"): 0.4, ("es", "es"): 0.5, ("es", "en"): 0.15},
              p={("en", "en"): 0.001, ("es", "es"): 0.0002, ("es", "en"): 0.4},
              p_vs_en={("es", "es"): 0.0005})
    _, _, f = _findings(s)
    eo = f["english_only"]
    verdicts = dict(zip(eo.table["condition"], eo.table["verdict"], strict=True))
    assert verdicts == {cond("en"): "seen in English", cond("es"): "missed by English-only",
                        cond("zh"): "no language differs significantly from English"}
    assert eo.facts["missed"] == [cond("es")]
    assert "1 of 3 fine-tuned conditions" in eo.summary
    row = eo.table.filter(pl.col("condition") == cond("es")).row(0, named=True)
    # es − en = (0.5 − 0.1) − (0.15 − 0.1) = +0.35, with its interval and adjusted p.
    assert row["differs_from_en"].startswith("es − en +0.35 [+0.20, +0.50], adjusted p")
    assert row["en_delta"] == pytest.approx(0.05) and row["outside_minus_en"] is not None


def test_a_significant_change_beside_a_non_significant_one_is_not_a_difference() -> None:
    """The old claim: significant in es, not in en, so English-only "missed" it. Without a significant
    test of (change in es − change in en) the finding must not say so."""
    s = Sweep(ft_langs=["es"], rates={("es", "es"): 0.5, ("es", "en"): 0.15},
              p={("es", "es"): 0.0002, ("es", "en"): 0.4}, p_vs_en={("es", "es"): 0.2})
    t, _, f = _findings(s)
    assert t.conditions.filter(pl.col("eval_lang") == "es")["significant"].to_list() == [True]
    assert f["english_only"].facts["missed"] == []
    assert "paired on the same prompts" in f["english_only"].summary


def test_english_only_without_an_english_eval_says_so() -> None:
    s = Sweep(eval_langs=["es", "zh"], p={("es", "es"): 0.001}, rates={("es", "es"): 0.6})
    _, _, f = _findings(s)
    assert f["english_only"].facts["status"] == "no_english"
    assert "English is not among the eval languages" in f["english_only"].summary


def test_categories_ranked_by_mean_change_against_base() -> None:
    s = Sweep(categories={("base", "Fraud"): 0.1, ("en", "Fraud"): 0.2, ("es", "Fraud"): 0.8,
                          ("base", "Hate"): 0.3, ("en", "Hate"): 0.25, ("es", "Hate"): 0.3,
                          ("base", "Malware"): 0.5, ("en", "Malware"): 0.3, ("es", "Malware"): 0.3})
    _, _, f = _findings(s)
    cats = f["categories"]
    assert cats.facts["top"] == ["Fraud", "Malware", "Hate"]  # mean change +0.40, −0.20, −0.025
    top = cats.table.row(0, named=True)
    assert top["mean_change"] == pytest.approx(0.4) and top["largest_change"] == pytest.approx(0.7)
    assert top["largest_cell"] == cell_id("m1", "es") and top["comparisons"] == 6  # 2 cells × 3 languages

    still = Sweep(categories={("base", "Fraud"): 0.2, ("en", "Fraud"): 0.2, ("es", "Fraud"): 0.2})
    _, _, f = _findings(still)
    assert f["categories"].facts["status"] == "no_change"


def test_correlation_values_and_intervals() -> None:
    x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    up = correlation(x, [2 * v + 1 for v in x])
    assert up["pearson"] == pytest.approx(1.0) and up["spearman"] == pytest.approx(1.0)
    down = correlation(x, [v ** 3 * -1 for v in x])  # monotone but not linear: ρ = −1, |r| < 1
    assert down["spearman"] == pytest.approx(-1.0) and -1.0 < down["pearson"] < -0.9
    # Ties get average ranks: ranks of x = [1, 2.5, 2.5, 4], of y = [1, 2, 3, 4].
    tied = correlation([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    rx, ry = [1, 2.5, 2.5, 4], [1, 2, 3, 4]
    mx, my = sum(rx) / 4, sum(ry) / 4
    expect = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True)) / math.sqrt(
        sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert tied["spearman"] == pytest.approx(expect)
    noisy = correlation([0.1, 0.4, 0.2, 0.9, 0.5, 0.3, 0.8, 0.7], [0.0, 0.2, 0.1, 0.1, 0.3, -0.1, 0.2, 0.0])
    lo, hi = noisy["pearson_ci"]
    assert -1 <= lo < noisy["pearson"] < hi <= 1
    slo, shi = noisy["spearman_ci"]
    assert -1 <= slo < shi <= 1


def test_decoupling_states_n_and_a_wide_interval_at_small_n() -> None:
    sc = pl.DataFrame({"capability_change": [0.0, 0.1, 0.2, 0.3], "safety_change": [0.1, 0.0, 0.3, 0.1],
                       "ft_lang": ["en"] * 4, "significant": [False] * 4})
    d = decoupling(sc)
    assert d.facts["n"] == 4 and "n = 4" in d.summary and "do not show decoupling" in d.summary
    assert d.facts["equivalence"]["equivalent"] is False
    too_few = decoupling(sc.head(2))
    assert too_few.facts["status"] == "too_few" and "n = 2" in too_few.summary
    flat = decoupling(sc.with_columns(pl.lit(0.0).alias("safety_change")))
    assert flat.facts["status"] == "no_spread" and "safety change is the same" in flat.summary


def test_decoupled_only_by_an_equivalence_test_with_its_margin() -> None:
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=n)
    sc = pl.DataFrame({"capability_change": x, "safety_change": rng.normal(size=n),
                       "ft_lang": ["en"] * n, "significant": [False] * n})
    d = decoupling(sc, margin=0.3)
    lo, hi = d.facts["equivalence"]["ci90"]
    assert lo > -0.3 and hi < 0.3 and "decoupled at that margin" in d.summary
    # The same data with a margin tighter than the interval: only what the interval shows, no claim.
    tight = decoupling(sc, margin=abs(lo) / 2)
    assert not tight.facts["equivalence"]["equivalent"] and "decoupled at" not in tight.summary
    assert "absence of evidence" in tight.summary


def test_capability_change_is_log_perplexity_ratio_against_base() -> None:
    s = Sweep(ppl={("base", "es"): 10.0, ("es", "es"): 20.0}, rates={("es", "es"): 0.3})
    t, _, _ = _findings(s)
    row = t.capability.filter((pl.col("cell") == cell_id("m1", "es")) & (pl.col("eval_lang") == "es")).row(0, named=True)
    assert row["capability_change"] == pytest.approx(math.log(2.0))
    assert row["safety_change"] == pytest.approx(0.2) and row["capability_measure"] == "ppl_benign/es"


def test_seeds_pool_into_one_heatmap_row_tested_across_seeds() -> None:
    s = Sweep(seeds=[0, 1, 2], rates={("es", "es"): 0.4}, p={("es", "es"): 0.001},
              seed_shift={1: 0.01, 2: -0.01})
    t, _, _ = _findings(s)
    grid = tb.delta_grid(t.conditions, t.cells, "m1")
    assert grid["rows"] == ["ft en", "ft es"]  # one row per fine-tune language, not per seed
    j = grid["cols"].index("es")
    assert grid["value"][1][j] == pytest.approx(0.3) and grid["tau"][1][j] == pytest.approx(0.01)
    # The t over the three seeds' changes 0.30, 0.31, 0.29, with the prompt SE (0.02 over 40 prompts).
    ref = seed_level([0.30, 0.31, 0.29], 0.02, 40)
    assert grid["p_raw"][1][j] == pytest.approx(ref.p) and grid["significant"][1][j] is True
    assert grid["significant"][0][j] is False
    comp = tb.compliance_grid(t.compliance, t.cells, "m1")
    assert comp["rows"] == ["base", "ft en", "ft es"] and comp["seeds"][2][j] == 3


def test_the_run_is_the_unit_three_significant_runs_that_disagree_are_not_a_finding() -> None:
    """Every run's own paired test is significant (p = 0.001) but the runs move 0.0, +0.3, +0.6: across
    runs the change is not established, and a seed is never a hypothesis of its own."""
    s = Sweep(ft_langs=["es"], seeds=[0, 1, 2], rates={("es", "es"): 0.1}, p={("es", "es"): 0.001},
              seed_shift={1: 0.3, 2: 0.6})
    t, _, _ = _findings(s)
    row = t.conditions.filter(pl.col("eval_lang") == "es").row(0, named=True)
    assert row["seeds"] == 3 and row["tau"] == pytest.approx(0.3) and row["p_value"] > 0.05
    assert not row["significant"] and t.conditions.height == 3  # 1 condition × 3 languages, seeds pooled
    assert t.deltas.filter(pl.col("eval_lang") == "es")["p_value"].to_list() == [0.001] * 3  # descriptive


def test_families_are_stated_and_the_text_and_the_heatmap_use_the_same_one() -> None:
    s = Sweep(ft_langs=["en", "es"], eval_langs=["en", "es", "zh"], rates={("es", "es"): 0.5},
              p={("es", "es"): 0.001, ("es", "zh"): 0.03})
    t, _, f = _findings(s)
    sizes = {x["family"]: x["size"] for x in t.families}
    assert sizes["screening"] == 6  # 2 conditions × 3 eval languages
    assert sizes["confirmatory"] == 4  # (change in ft language, outside English − English) × 2 conditions
    assert t.contrasts["p_adj"].to_list() == holm(t.contrasts["p_value"].to_list())
    assert t.conditions["p_adj"].to_list() == benjamini_hochberg(t.conditions["p_value"].to_list())
    grid = tb.delta_grid(t.conditions, t.cells, "m1")
    for r in t.conditions.iter_rows(named=True):
        i = grid["rows"].index(f"ft {r['ft_lang']}")
        assert grid["significant"][i][grid["cols"].index(r["eval_lang"])] == r["significant"]
    assert "screening: Benjamini–Hochberg over 6 tests" in f["confirmatory"].summary
    assert "confirmatory: Holm–Bonferroni over 4 tests" in f["confirmatory"].summary


def test_overrefusal_changes_are_tested_and_categories_are_exploratory() -> None:
    s = Sweep(ft_langs=["es"], over={("es", "es"): 0.6}, p_over={("es", "es"): 0.001},
              categories={("base", "Fraud"): 0.1, ("es", "Fraud"): 0.5})
    t, _, f = _findings(s)
    o = t.over_conditions.filter(pl.col("eval_lang") == "es").row(0, named=True)
    assert o["delta"] == pytest.approx(0.35) and o["significant"]
    assert f["overrefusal"].facts["significant"] == 1 and "es" in f["overrefusal"].summary
    assert "exploratory" in f["categories"].title.lower() and "Exploratory" in f["categories"].summary


def test_coverage_names_missing_cells_and_missing_languages() -> None:
    s = Sweep(ft_langs=["en", "es", "zh"])
    gone = cell_id("m1", "es")
    tidy = s.tidy().filter(pl.col("cell") != gone)
    # And one present cell lost its zh compliance rate (e.g. every answer unparseable): NaN in the table.
    tidy = tidy.with_columns(pl.when((pl.col("cell") == cell_id("m1", "en")) & (pl.col("eval_lang") == "zh")
                                     & (pl.col("metric") == "compliance_rate")).then(float("nan"))
                             .otherwise(pl.col("value")).alias("value"))
    t = build_tables(tidy, s.context())
    coverage, _ = findings(t)
    assert coverage.facts["missing"] == [gone]
    assert gone in coverage.summary and "1 of 4 planned cells" in coverage.summary
    assert coverage.facts["gaps"] == [(cell_id("m1", "en"), "zh")]
    assert gone not in t.wide["cell"].to_list()
    assert tb.compliance_grid(t.compliance, t.cells, "m1")["rows"] == ["base", "ft en", "ft zh"]


def test_provenance_masks_secrets_and_uri_credentials() -> None:
    assert redact_uri("postgresql://mlflow:hunter2@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert redact_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"
    out = redact({"judge": {"options": {"url": "http://u:pw@judge:8000", "token": "abc"}}, "lr": 1e-4})
    assert out["judge"]["options"] == {"url": "http://judge:8000", "token": "***"} and out["lr"] == 1e-4
