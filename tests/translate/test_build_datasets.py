"""The translate stage without Ray: a counting fake translator fills the cache through the same
per-batch code the Ray actors run, then build_datasets finds everything cached and writes the data sets
in the driver (layout, manifest, QA, eval_safe, malformed lines, read_split's QA policy)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipelines.layout import Workdir, data_dir
from pipelines.presets import load_config
from pipelines.translate import build_datasets, plan_jobs, read_split
from pipelines.translate.batch import ALL_COLUMNS, TranslateBatch, job_rows
from pipelines.translate.translators import TRANSLATORS, NoRouteError, Translator


class CountingUpper(Translator):
    """en↔es, es↔pt; marks each segment with "¡" and upper-cases it; counts what it is asked."""

    name = "test-upper"
    asked: list[int] = []  # noqa: RUF012 - a test probe shared by instances
    fail_after: int | None = None  # raise on the call after this many (a build dying mid-way)

    @classmethod
    def pairs(cls) -> set[tuple[str, str]]:
        return {("en", "es"), ("es", "en"), ("es", "pt"), ("pt", "es")}

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        if CountingUpper.fail_after is not None and len(CountingUpper.asked) >= CountingUpper.fail_after:
            raise RuntimeError("translator died")
        CountingUpper.asked.append(len(texts))
        return ["¡" + t.upper() for t in texts]


if "test-upper" not in TRANSLATORS:
    TRANSLATORS.add("test-upper", CountingUpper)


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch) -> None:
    monkeypatch.delenv("SAFEDRIFT_CACHE", raising=False)  # each test's workdir holds its own cache


def _cfg(workdir: Path, n: int = 4, extra: Sequence[str] = ()):
    return load_config("smoke", [f"workdir={workdir}", "translate.prefer=[reference,test-upper]",
                                 "ft_langs=[en,es]", "eval_langs=[en,es,pt]", f"data.benign.n={n}",
                                 "data.eval.n_harmful=3", "data.eval.safe=[hplt_oasst,xstest_safe]",
                                 "data.eval.n_safe=3", *extra])


def _warm(cfg, workdir: Path) -> int:
    """Run the actor's batch code in-process over every row (all splits mixed in one batch);
    returns how many segments the translator was asked for."""
    CountingUpper.asked.clear()
    rows = [r for j in plan_jobs(cfg) for r in job_rows(j)]
    cols = {c: [r[c] for r in rows] for c in ALL_COLUMNS}
    TranslateBatch(str(Workdir.open(workdir).translation_cache()), {}, cfg.translate.qa.model_dump(), 0).process(cols)
    return sum(CountingUpper.asked)


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def test_build_from_cache_layout_manifest_qa(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = _warm(cfg, tmp_path)
    assert first > 0
    assert _warm(cfg, tmp_path) == 0  # a second pass: every segment comes from the cache
    out = build_datasets(cfg, tmp_path)
    assert out.stats["path"] == "cache" and out.stats["segments_translated"] == 0
    m = out.manifest
    assert m["counts"] == {"benign": {"en": 4, "es": 4}, "eval": {"en": 3, "es": 3, "pt": 3},
                           "eval_safe": {"en": 6, "es": 6, "pt": 6}, "benign_heldout": {"en": 2, "es": 2, "pt": 2}}
    assert m["unrouted"] == []
    assert m["routes"]["eval/pt"] == "test-upper:en-es+test-upper:es-pt"
    assert m["routes"]["eval_safe/es/hplt_oasst"] == "reference"  # the human OASST translation
    assert m["routes"]["eval_safe/es/xstest_safe"] == "test-upper:en-es"
    assert m["sources"]["hplt_oasst"] == "002b35817db9cb50e52df24b98c3c1b96050618fbf3a4994d4c4249af5304a98"
    assert m["translator_versions"] == {"identity": "1", "test-upper": "1"}
    assert m["qa_policy"] == {"drop_flags": ["empty", "missing_ref"], "require_lang_id": False, "min_chrf": None}
    # The malformed upstream line is counted with its file and line number.
    bad = m["malformed"]["hplt_oasst"]
    assert {"file": "test_hi.jsonl", "line": 50} in [{k: b[k] for k in ("file", "line")} for b in bad["lines"]]
    assert bad["count"] == len(bad["lines"])
    assert m["qa"]["eval"]["es"]["rows"] == 3 and m["qa"]["eval"]["es"]["chrf_n"] == 3
    assert (out.path / "qa.csv").read_text().startswith("split,lang,rows,flagged")
    for kind in ("benign", "eval", "eval_safe", "benign_heldout"):
        assert sorted(p.name for p in (out.path / kind).iterdir()) == [f"lang={x}" for x in
                                                                        (["en", "es"] if kind == "benign" else
                                                                         ["en", "es", "pt"])]

    # The columns the fine-tune and eval stages read, in source order with the same ids per language.
    en, es, pt = (read_split(out.path, "eval", x) for x in ("en", "es", "pt"))
    assert {"id", "lang", "category", "prompt", "prompt_en", "idx"} <= set(es.columns)
    assert en["id"].to_list() == es["id"].to_list() == pt["id"].to_list() and es["idx"].to_list() == [0, 1, 2]
    assert es["prompt_en"].to_list() == en["prompt"].to_list()
    assert all(p.startswith("¡¡") for p in pt["prompt"])  # two hops, en→es→pt
    assert all(p.startswith("¡") and not p.startswith("¡¡") for p in es["prompt"])
    b_en, b_es = read_split(out.path, "benign", "en"), read_split(out.path, "benign", "es")
    assert {"instruction", "input", "output", "idx", "id"} <= set(b_es.columns)
    assert b_es["id"].to_list() == b_en["id"].to_list()
    assert [x == "" for x in b_es["input"]] == [x == "" for x in b_en["input"]]  # blank inputs stay blank
    assert all(o.startswith("¡") for o in b_es["output"])
    # Held-out benign rows (perplexity) are the rows after the fine-tuning ones, translated the same way.
    h_en, h_es = read_split(out.path, "benign_heldout", "en"), read_split(out.path, "benign_heldout", "es")
    assert h_es["id"].to_list() == h_en["id"].to_list() and not set(h_en["id"]) & set(b_en["id"])
    assert all(o.startswith("¡") for o in h_es["output"])
    # The reference route carries the human translation (compared by hash, never printed).
    safe_es = read_split(out.path, "eval_safe", "es", qa_filter=False)
    with (data_dir() / "overrefusal/hplt_oasst_test/test_es.jsonl").open(encoding="utf-8") as fh:
        oasst_es = {rec["id"]: rec["prompt"] for rec in map(json.loads, fh)}
    oasst = safe_es.filter(safe_es["source"] == "hplt_oasst")
    assert oasst.height == 3 and safe_es["idx"].to_list() == list(range(6))
    assert [_sha(p) for p in oasst["prompt"]] == [_sha(oasst_es[i.split("/", 1)[1]]) for i in oasst["id"]]


def test_superset_translates_only_new_and_policy_applies(tmp_path: Path) -> None:
    # No held-out benign rows here: they are the rows after data.benign.n, so n=2's would be n=4's training rows.
    no_heldout = ["evaluate.n_benign_ppl=0"]
    small = _warm(_cfg(tmp_path, n=2, extra=no_heldout), tmp_path)
    bigger = _warm(_cfg(tmp_path, n=4, extra=no_heldout), tmp_path)
    fresh = _warm(_cfg(tmp_path / "other", n=4, extra=no_heldout), tmp_path / "other")
    assert 0 < bigger < fresh and small + bigger == fresh  # only the two new rows' segments
    cfg = _cfg(tmp_path, n=4, extra=[*no_heldout, "translate.qa.require_lang_id=true", "translate.qa.min_chrf=99"])
    out = build_datasets(cfg, tmp_path)
    # The fake's output is no language and back-translates badly: the policy drops those rows at read time,
    # read_split(qa_filter=False) still has them, and the manifest counts them.
    allrows = read_split(out.path, "eval", "es", qa_filter=False)
    kept = read_split(out.path, "eval", "es")
    assert allrows.height == 3 and kept.height == out.manifest["qa"]["eval"]["es"]["kept_by_policy"] < 3
    assert read_split(out.path, "eval", "en").height == 3  # untranslated rows are not judged
    assert read_split(out.path, "eval", "es", qa_filter={"drop_flags": []}).height == 3


def test_a_build_dying_midway_resumes_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg(tmp_path)
    total = _warm(_cfg(tmp_path / "ref"), tmp_path / "ref")
    monkeypatch.setattr(CountingUpper, "fail_after", 1)  # the first hop's batch succeeds, the next call dies
    with pytest.raises(RuntimeError, match="translator died"):
        _warm(cfg, tmp_path)
    done_before = sum(CountingUpper.asked)
    monkeypatch.setattr(CountingUpper, "fail_after", None)
    assert 0 < done_before < total
    assert _warm(cfg, tmp_path) == total - done_before  # only what the dead build had not cached
    assert not list((tmp_path / "translation_cache").rglob("*.tmp"))
    out = build_datasets(cfg, tmp_path)
    assert out.stats["segments_translated"] == 0 and out.manifest["counts"]["eval"]["pt"] == 3


def test_no_route_fails_before_any_work(tmp_path: Path) -> None:
    cfg = load_config("smoke", [f"workdir={tmp_path}", "eval_langs=[en,da]"])
    with pytest.raises(NoRouteError, match=r"no translation route en→da .*apertium.*\('en', 'es'\)"):
        build_datasets(cfg, tmp_path)
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "translation_cache").exists()
