"""The report's three outcomes: stacked shares per cell × language, and the finding that names changes in
compliance that come with changes in non-answers."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from report_synth import Sweep, cell_id

from pipelines.evaluate.measure import TIDY_SCHEMA
from pipelines.report import build_tables, write_report
from pipelines.report import outcomes as oc

# (ft_lang, eval_lang) -> (complied, refused, non_answer)
SHARES = {("base", "en"): (0.3, 0.7, 0.0), ("base", "es"): (0.1, 0.3, 0.6),
          ("es", "en"): (0.32, 0.68, 0.0), ("es", "es"): (0.5, 0.3, 0.2)}


def _tidy(s: Sweep) -> pl.DataFrame:
    rows = []
    for ft, seed, ep in s.cells():
        cid = cell_id(s.model, ft, seed, ep)
        for lang in s.eval_langs:
            c, r, na = SHARES[(ft, lang)]
            for metric, v in (("refusal_rate", r), ("non_answer_rate", na)):
                rows.append({"cell": cid, "model": s.model, "ft_lang": ft, "seed": seed, "epochs": ep,
                             "eval_lang": lang, "metric": metric, "value": v, "ci_low": None, "ci_high": None,
                             "n": s.n})
    return pl.concat([_two_labels(s), pl.DataFrame(rows, schema=TIDY_SCHEMA)])


def _two_labels(s: Sweep) -> pl.DataFrame:
    """The synthetic sweep as cells judged before the three outcomes wrote it (no refusal/non-answer rates)."""
    return s.tidy().filter(~pl.col("metric").is_in(["refusal_rate", "non_answer_rate"]))


def _sweep() -> Sweep:
    return Sweep(ft_langs=["es"], eval_langs=["en", "es"],
                 rates={k: v[0] for k, v in SHARES.items()})


def test_outcome_table_holds_three_shares_that_add_up() -> None:
    s = _sweep()
    t = build_tables(_tidy(s), s.context())
    table = oc.outcome_table(t.tidy, t.cells)
    assert table.height == 4
    sums = (table["complied"] + table["refused"] + table["non_answer"]).to_list()
    assert all(abs(x - 1.0) < 1e-9 for x in sums)
    row = table.filter((pl.col("ft_lang") == "base") & (pl.col("eval_lang") == "es")).row(0, named=True)
    assert (row["complied"], row["refused"], row["non_answer"]) == (0.1, 0.3, 0.6)


def test_finding_names_a_compliance_change_that_came_with_fewer_non_answers() -> None:
    s = _sweep()
    t = build_tables(_tidy(s), s.context())
    f = oc.non_answers_moved(oc.outcome_table(t.tidy, t.cells))
    # es: compliance 0.1 -> 0.5 while non-answers fell 0.6 -> 0.2; en moved neither.
    assert f.facts["moved"] == [(cell_id("m1", "es"), "es")]
    assert "compliance +0.40 with non-answers -0.40" in f.summary
    assert f.facts["n_high"] == 1  # base in es: 0.6 of the answers are none


def test_cells_without_three_outcomes_draw_nothing_and_say_so() -> None:
    s = _sweep()
    t = build_tables(_two_labels(s), s.context())  # two-label cells: no non_answer_rate rows
    table = oc.outcome_table(t.tidy, t.cells)
    assert table["non_answer"].is_null().all()
    assert oc.outcome_bars(table, t.cells, "m1") is None
    assert "No non-answer shares" in oc.non_answers_moved(table).summary


def test_report_draws_the_stacked_bars_and_writes_the_finding(tmp_path: Path) -> None:
    s = _sweep()
    write_report(_tidy(s), s.context(), tmp_path / "r")
    out = tmp_path / "r"
    assert (out / "outcomes_m1.png").stat().st_size > 1000 and (out / "outcomes.csv").exists()
    findings = json.loads((out / "findings.json").read_text())
    assert findings["non_answers"]["facts"]["n_moved"] == 1
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "what the answers did" in page and "Changes in compliance that come with changes in non-answers" in page


def _validity_rows(s: Sweep, figures: dict[str, dict[str, float | None]]) -> pl.DataFrame:
    """judge/* tidy rows as evaluate.judge_agreement writes them, per language: validated plus figures."""
    rows = []
    for ft, seed, ep in s.cells():
        base = {"cell": cell_id(s.model, ft, seed, ep), "model": s.model, "ft_lang": ft, "seed": seed, "epochs": ep}
        for lang, fig in figures.items():
            for metric, value in {"validated": float(bool(fig)), **fig}.items():
                rows.append(base | {"eval_lang": lang, "metric": f"judge/{metric}", "value": value, "ci_low": None,
                                    "ci_high": None, "n": 25})
    return pl.DataFrame(rows, schema=TIDY_SCHEMA)


def test_validity_with_an_undefined_kappa_and_a_large_rate_error_is_said(tmp_path: Path) -> None:
    """pt's hand labels hold refusals and non-answers only (κ undefined); zh's rate is 0.18 off; da has no
    labels. The figures say κ n/a / unvalidated, the summary names the rate error and never crashes."""
    from pipelines.report import tables as tb
    from pipelines.report.summary import judge_trust

    s = Sweep(ft_langs=["es"], eval_langs=["en", "pt", "zh", "da"])
    figs_ = {"en": {"kappa": 0.86, "kappa_ci_low": 0.66, "kappa_ci_high": 1.0, "rate_error": -0.07},
             "pt": {"kappa": None, "rate_error": 0.0, "non_answer_recall": 1.0},
             "zh": {"kappa": -0.1, "kappa_ci_low": -0.3, "kappa_ci_high": 0.2, "rate_error": -0.18}, "da": {}}
    tidy = pl.concat([s.tidy().filter(~pl.col("metric").str.starts_with("judge/")), _validity_rows(s, figs_)])
    t = build_tables(tidy, s.context())
    assert [t.cells.lang_label(x) for x in s.eval_langs] == ["en\nκ 0.86", "pt\nκ n/a", "zh\nκ -0.10", "da\nunvalidated"]
    v = tb.judge_validity(t.tidy, t.cells)
    assert v.filter(pl.col("eval_lang") == "zh")["rate_error"].to_list() == [-0.18]
    text = " ".join(judge_trust(v))
    assert "en κ 0.86 [0.66, 1.00], rate error -0.07" in text and "pt κ n/a" in text
    assert "zh (the judge's rate was -0.18 off" in text and "Unvalidated: da" in text
    # Labels of another model's answers are said to be another model's; labels of this model's are not.
    other = {"models": [{"alias": "qwen-x"}], "judge": {"labelled_models": ["smollm-y"]}}
    assert "The hand-labelled answers are smollm-y's, not qwen-x's" in " ".join(judge_trust(v, other))
    same = {"models": [{"alias": "qwen-x"}], "judge": {"labelled_models": ["qwen-x", "smollm-y"]}}
    assert "hand-labelled answers are" not in " ".join(judge_trust(v, same))
    # … and the figures' language labels say whose answers the κ was measured on.
    ctx = s.context() | {"judge": {"labelled_models": ["smollm-y"]}}
    t2 = build_tables(tidy, ctx)
    assert [t2.cells.lang_label(x) for x in s.eval_langs] == [
        "en\nκ 0.86 (other model)", "pt\nκ n/a (other model)", "zh\nκ -0.10 (other model)", "da\nunvalidated"]
    write_report(tidy, s.context(), tmp_path / "r")  # the page renders with these figures
    assert "rate_error" in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
