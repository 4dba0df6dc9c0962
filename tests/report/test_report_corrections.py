"""Issue #18: statistics that hold at scale (Holm across cells × eval languages, raw and adjusted p shown,
p-values joined by language, a rate over nothing is missing, per-category changes with intervals) and the
judge's validity per eval language in the report (an unvalidated language marked, never mixed in)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from report_synth import Sweep, cell_id

from pipelines.evaluate.measure import TIDY_SCHEMA, compliance_by_lang, metric_dict
from pipelines.evaluate.stats import benjamini_hochberg, holm
from pipelines.report import build_tables, findings, write_report
from pipelines.report import figures as figs
from pipelines.report import tables as tb


def test_holm_and_bh_known_values() -> None:
    p = [0.01, 0.04, 0.03, None, 0.005]
    assert holm(p) == [0.03, 0.06, 0.06, None, 0.02]
    assert [round(x, 6) if x is not None else None for x in benjamini_hochberg(p)] == [0.02, 0.04, 0.04, None, 0.02]


def _with_validity(s: Sweep, kappa: dict[str, float | None]) -> pl.DataFrame:
    rows = []
    for ft, seed, ep in s.cells():
        base = {"cell": cell_id(s.model, ft, seed, ep), "model": s.model, "ft_lang": ft, "seed": seed, "epochs": ep}
        for lang, k in kappa.items():
            rows.append(base | {"eval_lang": lang, "metric": "judge/validated", "value": float(k is not None),
                                "ci_low": None, "ci_high": None, "n": 1350 if k is not None else 0})
            if lang != "en":  # the synthetic sweep carries English's (0.8) already
                rows.append(base | {"eval_lang": lang, "metric": "judge/kappa", "value": k, "ci_low": None,
                                    "ci_high": None, "n": 1350 if k is not None else 0})
            rows.append(base | {"eval_lang": lang, "metric": "judge/bt_share", "value": 1.0 if lang == "es" else 0.0,
                                "ci_low": None, "ci_high": None, "n": s.n})
    return pl.concat([s.tidy(), pl.DataFrame(rows, schema=TIDY_SCHEMA)])


def test_screening_uses_adjusted_p_and_shows_both() -> None:
    # One raw p of 0.03 among 8 languages × 1 condition: significant uncorrected, not after BH (0.03 · 8).
    langs = ["en", "es", "zh", "pt", "da", "el", "hi", "tl"]
    s = Sweep(ft_langs=["es"], eval_langs=langs, rates={("es", "zh"): 0.4}, p={("es", "zh"): 0.03},
              p_vs_en={("es", "zh"): 0.03})
    t = build_tables(s.tidy(), s.context())
    row = t.conditions.filter(pl.col("eval_lang") == "zh").row(0, named=True)
    assert row["p_value"] == 0.03 and abs(row["p_adj"] - 0.24) < 1e-12 and not row["significant"]
    assert t.deltas.filter(pl.col("eval_lang") == "zh")["p_value"].to_list() == [0.03]  # the run's own, raw
    _, found = findings(t)
    eng = next(f for f in found if f.key == "english_only")
    assert eng.facts["missed"] == [] and "Benjamini–Hochberg" in eng.summary
    # A difference against English small enough to survive its family (8 differences) is caught.
    s.p_vs_en[("es", "zh")] = 0.001
    t = build_tables(s.tidy(), s.context())
    eng = next(f for f in findings(t)[1] if f.key == "english_only")
    assert eng.facts["missed"] == [tb.condition_label("m1", "es", 1)]
    s.p[("es", "zh")] = 0.001
    fold = next(f for f in findings(build_tables(s.tidy(), s.context()))[1] if f.key == "largest_fold_increase")
    assert "adjusted p = 0.008" in fold.summary and "p = 0.001" in fold.summary


def test_english_is_tested_as_an_english_only_evaluation_would_test_it() -> None:
    """English p 0.02 among 8 eval languages: not significant in the screening family (BH over 8), but an
    English-only evaluation runs one test for the one condition, and sees the change; so a language that
    differs from English does not make it "missed by English-only"."""
    langs = ["en", "es", "zh", "pt", "da", "el", "hi", "tl"]
    s = Sweep(ft_langs=["es"], eval_langs=langs, rates={("es", "en"): 0.4}, p={("es", "en"): 0.02},
              p_vs_en={("es", "zh"): 0.001})
    t = build_tables(s.tidy(), s.context())
    assert not t.conditions.filter(pl.col("eval_lang") == "en")["significant"].item()  # screening: 0.16
    eng = next(f for f in findings(t)[1] if f.key == "english_only")
    assert eng.facts["missed"] == [] and eng.table["verdict"].to_list() == ["seen in English"]
    assert abs(eng.table["en_p_adj"].item() - 0.02) < 1e-12 and "significant change in 1 (" in eng.summary


def test_p_values_are_joined_by_language_not_position() -> None:
    s = Sweep(ft_langs=["es"], eval_langs=["en", "es", "zh"], p={("es", "es"): 0.001, ("es", "zh"): 0.5})
    tidy = s.tidy()
    shuffled = tidy.sample(fraction=1.0, shuffle=True, seed=3)
    d = build_tables(shuffled, s.context()).conditions
    p = dict(zip(d["eval_lang"], d["p_value"], strict=True))
    assert p == {"en": 1.0, "es": 0.001, "zh": 0.5}


def test_a_rate_over_no_parseable_answer_is_missing_not_zero() -> None:
    judged = pl.DataFrame({"lang": ["en", "en", "es"], "label": [None, None, 1]}, schema={"lang": pl.String,
                                                                                        "label": pl.Int8})
    m = metric_dict(compliance_by_lang(judged))
    assert m["safety/compliance_rate/en"] != m["safety/compliance_rate/en"]  # NaN: left out of MLflow
    assert m["safety/compliance_rate/es"] == 1.0 and m["safety/unparseable/en"] == 2.0


def test_category_changes_carry_intervals() -> None:
    s = Sweep(ft_langs=["es"], categories={("base", "fraud"): 0.2, ("es", "fraud"): 0.6})
    cat = build_tables(s.tidy(), s.context()).categories
    r = cat.row(0, named=True)
    assert abs(r["change"] - 0.4) < 1e-9 and r["change_ci_low"] < 0.4 < r["change_ci_high"]


def test_unvalidated_language_is_marked_in_tables_figures_and_page(tmp_path: Path) -> None:
    s = Sweep(ft_langs=["es"], eval_langs=["en", "es", "zh"])
    tidy = _with_validity(s, {"en": 0.8, "es": 0.81, "zh": None})
    t = build_tables(tidy, s.context())
    assert t.cells.validity == {"en": 0.8, "es": 0.81, "zh": None}
    v = dict(zip(t.compliance["eval_lang"], t.compliance["judge_validated"], strict=True))
    assert v == {"en": True, "es": True, "zh": False}
    grid = tb.compliance_grid(t.compliance, t.cells, "m1")
    assert grid["col_labels"] == ["en\nκ 0.80", "es\nκ 0.81", "zh\nunvalidated"]
    fig = figs.compliance_heatmap(grid, "m1")
    assert [x.get_text() for x in fig.axes[0].get_xticklabels()] == grid["col_labels"]
    write_report(tidy, s.context(), tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "Unvalidated: zh" in page and "Back-translation, as done" in page and "Holm–Bonferroni" in page
