"""Planning the eval suite's over-refusal and held-out splits (no Ray, no translation): which source
reaches which language by which route, what is left out and recorded, and when planning must fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.presets import load_config
from pipelines.translate import plan_jobs
from pipelines.translate.translators import NoRouteError


def _jobs(kind: str, jobs) -> dict[tuple[str, str], object]:
    return {(j.lang, j.source): j for j in jobs if j.kind == kind}


def test_laptop_safe_prompts_reach_every_eval_language(tmp_path: Path) -> None:
    cfg = load_config("laptop", [f"workdir={tmp_path}"])
    jobs = plan_jobs(cfg)
    safe = _jobs("eval_safe", jobs)
    # XSTest through Apertium into es and pt (via es); OASST's human translations into es and zh.
    assert set(safe) == {(lang, src) for lang in ("en", "es", "pt") for src in ("xstest_safe", "hplt_oasst")} | {
        ("zh", "hplt_oasst")}
    assert safe[("zh", "hplt_oasst")].route == "reference" and safe[("es", "hplt_oasst")].route == "reference"
    assert [h.translator for h in safe[("pt", "xstest_safe")].route] == ["apertium", "apertium"]
    # The one pair with no route is recorded, not silently missing.
    assert [(s["split"], s["lang"], s["source"]) for s in jobs.skipped] == [("eval_safe", "zh", "xstest_safe")]
    # A spread subset: XSTest's file is ordered by prompt type, its first 4 rows are all one type.
    assert len({r["category"] for r in safe[("en", "xstest_safe")].rows}) == 4
    # idx stays unique within a language across sources.
    en_idx = [k + j.idx_offset for (lang, _), j in safe.items() if lang == "en" for k in range(len(j.rows))]
    assert sorted(en_idx) == list(range(8))


def test_heldout_benign_rows_follow_the_finetuning_rows(tmp_path: Path) -> None:
    cfg = load_config("laptop", [f"workdir={tmp_path}", "data.benign.n=5", "evaluate.n_benign_ppl=3"])
    jobs = plan_jobs(cfg)
    ft = {j.lang: j for j in jobs if j.kind == "benign"}
    held = {j.lang: j for j in jobs if j.kind == "benign_heldout"}
    assert set(held) == {"en", "es", "pt", "zh"} and all(len(j.rows) == 3 for j in held.values())
    assert held["zh"].route == "native" and held["zh"].source == "alpaca_zh"  # the native Chinese set
    for lang in ("en", "es", "zh"):
        assert not {r["id"] for r in held[lang].rows} & {r["id"] for r in ft[lang].rows}
    assert [h.tgt for h in held["pt"].route] == ["es", "pt"]
    none = plan_jobs(load_config("laptop", [f"workdir={tmp_path}", "evaluate.n_benign_ppl=0"]))
    assert not [j for j in none if j.kind == "benign_heldout"]


def test_a_language_without_safe_prompts_fails_before_any_work(tmp_path: Path) -> None:
    cfg = load_config("laptop", [f"workdir={tmp_path}", "data.eval.safe=[xstest_safe]"])
    with pytest.raises(NoRouteError, match=r"no over-refusal prompts for eval language\(s\) \['zh'\].*hplt_oasst"
                                           r".*data\.eval\.n_safe=0"):
        plan_jobs(cfg)
    off = plan_jobs(load_config("laptop", [f"workdir={tmp_path}", "data.eval.safe=[xstest_safe]", "data.eval.n_safe=0"]))
    assert not [j for j in off if j.kind == "eval_safe"] and not off.skipped
