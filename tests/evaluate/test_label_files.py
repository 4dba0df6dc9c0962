"""Label files with three outcomes (issue 26, point 3): CSV and JSONL both read, every bad input fails
before any work naming the file, the line and the accepted values; the laptop-dev labels pinned; a
validity row carries κ with its interval, the confusion matrix, the non-answer recall and the rate error
(values computed by hand); `safedrift labels sample` writes a blind CSV that judge.labels reads once
labelled. Texts here are neutral placeholders: nothing of a real prompt or answer is printed."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest

from pipelines.config import JudgeConfig
from pipelines.errors import DataError
from pipelines.evaluate.judges import COMPLIED, NON_ANSWER, REFUSED, Judge, JudgeItem, Verdict
from pipelines.evaluate.judges.labels import (
    CSV_COLUMNS,
    DEV,
    DEV_SHA256,
    dev_labels,
    dev_labels_path,
    read_user_labels,
    small_model_sets,
)
from pipelines.evaluate.judges.policy import Judging, check_judge_config
from pipelines.evaluate.judges.validity import beside, measure, row_for
from pipelines.hashing import file_sha256
from pipelines.layout import data_dir

SHARED_DEV = data_dir().parent / "labels" / "laptop-answers-dev.csv"


def write_csv(path: Path, rows: Sequence[dict[str, str]], columns: Sequence[str] = CSV_COLUMNS) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def row(lang: str, response: str, label: str, cell: str = "m__base", sid: str = "p/1") -> dict[str, str]:
    return {"lang": lang, "kind": "unsafe", "source_id": sid, "cell": cell, "prompt": f"question {sid}",
            "response": response, "label": label, "weak": "0"}


class LetterJudge(Judge):
    """Says what the answer's first letter says (C complied, R refused, N non-answer, else unparseable):
    a judge whose every verdict the test chooses. It detects non-answers itself (no form check)."""

    name = "letter"
    native_languages = None
    detects_non_answers = True

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        out = []
        for i in items:
            outcome = {"C": COMPLIED, "R": REFUSED, "N": NON_ANSWER}.get(i.response[:1])
            out.append(Verdict(None, 0.5, "unparseable") if outcome is None else
                       Verdict(int(outcome == COMPLIED), float(outcome == COMPLIED), outcome))
        return out


# ---- reading ---------------------------------------------------------------------------------------------

def test_csv_three_classes_rows_of_its_language(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "labels.csv", [row("zh", "a", "refused", sid="p/1"), row("en", "b", "complied"),
                                            row("zh", "c", "Complied", cell="m__zh", sid="p/2"),
                                            row("zh", "d", " non_answer ", sid="p/3")])
    ls = read_user_labels(p, "zh")
    assert ls.outcomes == [REFUSED, COMPLIED, NON_ANSWER] and ls.labels == [0, 1, 0]
    assert ls.groups == ["m__base", "m__zh", "m__base"] and ls.source == "user:labels.csv"
    assert [i.language for i in ls.items] == ["zh"] * 3 and ls.small_model
    assert ls.subset([2]).outcomes == [NON_ANSWER]


def test_csv_without_lang_column_takes_every_row(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "mine.csv", [{"prompt": "q", "response": "a", "label": "refused"},
                                          {"prompt": "q", "response": "b", "label": "complied"}],
                  columns=("prompt", "response", "label"))
    assert read_user_labels(p, "es").outcomes == [REFUSED, COMPLIED]


def test_jsonl_two_classes_and_names(tmp_path: Path) -> None:
    p = tmp_path / "zh.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [{"prompt": "q", "response": "a", "label": 0},
                                                    {"prompt": "q", "response": "b", "label": 1},
                                                    {"prompt": "q", "response": "c", "label": "non_answer"}]) + "\n")
    ls = read_user_labels(p, "zh")
    assert ls.labels == [0, 1, 0] and ls.outcomes == [REFUSED, COMPLIED, NON_ANSWER]


# ---- bad input -------------------------------------------------------------------------------------------

ACCEPTED = "refused, complied, non_answer"


BAD_FILES = [
    # A quoted answer over two lines: the bad row starts on line 5 of the file (header, a row, a row of two lines).
    ("bad.csv", [row("zh", "a", "refused"), row("zh", "two\nlines", "complied"), row("zh", "c", "harmful")],
     CSV_COLUMNS, rf"bad\.csv:5: label 'harmful' is not one of {ACCEPTED}"),
    ("blank.csv", [row("zh", "a", "refused"), row("zh", "b", "")], CSV_COLUMNS,
     rf"blank\.csv:3: label is empty; fill it with one of {ACCEPTED}"),
    ("cols.csv", [row("zh", "a", "refused")], ("lang", "prompt", "response"),
     r"cols\.csv:1: missing column\(s\) label .*columns lang, kind"),
    ("en.csv", [row("en", "a", "refused"), row("en", "b", "complied")], CSV_COLUMNS,
     r"no row with lang 'zh' \(the file has \['en'\]\)"),
    ("one.csv", [row("zh", "a", "refused"), row("zh", "b", "refused")], CSV_COLUMNS, "only refused answers"),
]


@pytest.mark.parametrize(("name", "rows", "columns", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_label_file_names_the_line_and_the_fix(tmp_path: Path, name: str, rows: list[dict[str, str]],
                                                     columns: Sequence[str], message: str) -> None:
    """An unknown or empty label, a missing column, no row in the language, one kind of answer only."""
    with pytest.raises(DataError, match=message):
        read_user_labels(write_csv(tmp_path / name, rows, columns=columns), "zh")


def test_jsonl_unknown_label(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "q", "response": "a", "label": 1}\n{"prompt": "q", "response": "b", "label": "yes"}\n')
    with pytest.raises(DataError, match=rf"row 2: 'label' must be 1 \(complies\) or 0 \(refuses\) or one of {ACCEPTED}"):
        read_user_labels(p, "zh")


def test_config_with_a_language_the_study_does_not_evaluate(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "zh.csv", [row("zh", "a", "refused"), row("zh", "b", "complied")])
    with pytest.raises(DataError, match=r"judge\.labels\.zh: the study does not evaluate 'zh'.*add it to eval_langs"):
        check_judge_config(JudgeConfig(labels={"zh": str(p)}), ["en", "es"])
    check_judge_config(JudgeConfig(labels={"zh": str(p)}), ["en", "zh"])
    bad = write_csv(tmp_path / "bad.csv", [row("zh", "a", "refused"), row("zh", "b", "maybe")])
    with pytest.raises(DataError, match=r"bad\.csv:3: label 'maybe'"):
        check_judge_config(JudgeConfig(labels={"zh": str(bad)}), ["en", "zh"])


# ---- laptop-dev --------------------------------------------------------------------------------------------

@pytest.mark.skipif(not SHARED_DEV.is_file(), reason="the shared labels (../shared/labels) are not here")
def test_dev_labels_are_the_pinned_file() -> None:
    assert file_sha256(SHARED_DEV) == DEV_SHA256 and dev_labels_path() == SHARED_DEV
    zh = dev_labels("zh")
    assert zh is not None and zh.source == DEV and len(zh) == 17 and set(zh.outcomes) == {REFUSED, COMPLIED, NON_ANSWER}
    assert dev_labels("el") is None  # no rows in a language: nothing to validate on


def test_without_the_shared_file_nothing_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEDRIFT_DATA_DIR", str(tmp_path / "data"))
    assert dev_labels_path() is None and small_model_sets(["en", "zh"]) == []


def test_a_changed_dev_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEDRIFT_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "labels").mkdir()
    write_csv(tmp_path / "labels" / "laptop-answers-dev.csv", [row("zh", "a", "refused")])
    with pytest.raises(DataError, match="not the pinned"):
        dev_labels_path()


# ---- validity rows -----------------------------------------------------------------------------------------

# Ten answers in zh: the label, then what the judge says (its first letter).
HAND = [("complied", "C"), ("complied", "C"), ("complied", "R"), ("refused", "R"), ("refused", "R"),
        ("refused", "C"), ("non_answer", "N"), ("non_answer", "N"), ("non_answer", "C"), ("non_answer", "R")]


def test_validity_row_by_hand(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "zh.csv", [row("zh", f"{said} answer {k}", label, sid=f"p/{k}")
                                        for k, (label, said) in enumerate(HAND)])
    judge = LetterJudge()
    judging = Judging(judge, back_translate=False)
    r = measure(judge, [read_user_labels(p, "zh")], judging)[0]
    # Complied vs not: truth 1110000000, judge 1100010010 → 7 of 10 agree; p_e = .3×.4 + .7×.6 = .54.
    assert r["n"] == 10 and r["accuracy"] == pytest.approx(0.7)
    assert r["kappa"] == pytest.approx((0.7 - 0.54) / (1 - 0.54))
    assert r["kappa_ci_low"] < r["kappa"] < r["kappa_ci_high"] and r["kappa_ci_low"] >= -1 and r["kappa_ci_high"] <= 1
    assert r["confusion"][COMPLIED] == {COMPLIED: 2, REFUSED: 1, NON_ANSWER: 0, "unparseable": 0}
    assert r["confusion"][REFUSED] == {COMPLIED: 1, REFUSED: 2, NON_ANSWER: 0, "unparseable": 0}
    assert r["confusion"][NON_ANSWER] == {COMPLIED: 1, REFUSED: 1, NON_ANSWER: 2, "unparseable": 0}
    assert r["non_answer_recall"] == pytest.approx(0.5)
    # The judge says 4 of 10 complied, the labels 3 of 10.
    assert r["judge_rate"] == pytest.approx(0.4) and r["rate_error"] == pytest.approx(0.1)
    assert r["mode"] == "native" and r["source"] == "user:zh.csv"
    assert measure(judge, [read_user_labels(p, "zh")], judging)[0]["kappa_ci_low"] == r["kappa_ci_low"]  # seeded
    # Shown for zh as it is judged; it does not vouch for another mode.
    assert row_for([r], "zh", "native") is r and row_for([r], "zh", "back-translate") is None
    info = judging.languages_info(["zh"], [r])[0]
    assert info["validated"] and info["rate_error"] == pytest.approx(0.1) and info["non_answer_recall"] == 0.5


def test_labels_of_one_compliance_class_have_no_kappa(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "pt.csv", [row("pt", "R a", "refused"), row("pt", "C b", "non_answer"),
                                        row("pt", "N c", "non_answer"), row("pt", "x d", "refused")])
    r = measure(LetterJudge(), [read_user_labels(p, "pt")], Judging(LetterJudge(), back_translate=False))[0]
    assert r["kappa"] is None and r["kappa_ci_low"] is None
    assert r["unparseable"] == 1 and r["confusion"][REFUSED]["unparseable"] == 1
    # Compliance over the 3 parseable answers (1 complied) against 0 of 4 labelled.
    assert r["rate_error"] == pytest.approx(1 / 3) and r["non_answer_recall"] == 0.5


def test_small_model_labels_come_before_translated_xstest() -> None:
    rows = [{"lang": "es", "condition": "back-translated", "source": "apertium:es-en", "mode": None, "n": 900},
            {"lang": "es", "condition": "as-written", "source": DEV, "mode": "back-translate", "n": 25},
            {"lang": "es", "condition": "as-written", "source": "user:es.csv", "mode": "back-translate", "n": 50}]
    assert row_for(rows, "es", "back-translate")["source"] == "user:es.csv"
    assert row_for(rows[:2], "es", "back-translate")["source"] == DEV
    assert row_for(rows[:1], "es", "back-translate")["source"] == "apertium:es-en"
    assert row_for(rows, "es", "as-written") is None  # judged as written: nothing measured that way
    # English: XSTest's human labels stay the headline (people's labels of answers as written); laptop-dev
    # is shown beside; a user's own file comes first.
    en = [{"lang": "en", "condition": "as-written", "source": "human", "mode": None, "n": 1350, "kappa": 0.87},
          {"lang": "en", "condition": "as-written", "source": DEV, "mode": "native", "n": 29, "kappa": 1.0}]
    assert row_for(en, "en", "native")["source"] == "human"
    both = beside(en, "en", "native")
    assert both["xstest"]["n"] == 1350 and both["small_models"]["source"] == DEV and both["small_models"]["kappa"] == 1.0
    mine = {"lang": "en", "condition": "as-written", "source": "user:en.csv", "mode": "native", "n": 40}
    assert row_for([*en, mine], "en", "native")["source"] == "user:en.csv"


def test_judge_agreement_writes_the_new_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.evaluate import judge_agreement
    from pipelines.evaluate.judges import validity
    from pipelines.evaluate.measure import Tidy
    from pipelines.presets import load_config

    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SAFEDRIFT_DATA_DIR", str(tmp_path / "data"))  # no laptop-dev: only the file below
    monkeypatch.setattr(validity, "label_sets", lambda *a, **k: [])  # no XSTest translation in a unit test
    p = write_csv(tmp_path / "zh.csv", [row("zh", f"{said} answer {k}", label, sid=f"p/{k}")
                                        for k, (label, said) in enumerate(HAND)])
    cfg = load_config("smoke", [f"workdir={tmp_path / 'wd'}", "eval_langs=[en,zh]", "judge.back_translate=false",
                                f"judge.labels={{zh: {p}}}"])
    tidy = Tidy({"model": "m", "ft_lang": "base"}, "m__base")
    metrics, info = judge_agreement(cfg, LetterJudge(), None, tidy)
    assert metrics["judge/validated/zh"] == 1.0 and metrics["judge/validated/en"] == 0.0
    assert metrics["judge/rate_error/zh"] == pytest.approx(0.1)
    assert metrics["judge/non_answer_recall/zh"] == pytest.approx(0.5)
    assert metrics["judge/kappa_ci_low/zh"] < metrics["judge/kappa/zh"] < metrics["judge/kappa_ci_high/zh"]
    assert metrics["judge/small_kappa/zh"] == metrics["judge/kappa/zh"] and "judge/xstest_kappa/zh" not in metrics
    names = set(tidy.frame()["metric"])
    assert {"judge/kappa", "judge/rate_error", "judge/kappa_ci_low", "judge/non_answer_recall",
            "judge/small_kappa", "judge/small_rate_error"} <= names
    assert info["judge_languages"][1]["small_models"]["source"] == "user:zh.csv"


# ---- labels sample -------------------------------------------------------------------------------------------

def finished_study(workdir: Path, langs: str = "[en,es]") -> list[str]:
    """The smoke study with every cell finished: minimal judged files (with the judge's columns, which
    the sample must leave out) and a manifest per cell. Returns the overrides naming it."""
    from cluster.storage import write_manifest
    from pipelines.cells import cell_dir, study_cells, study_hashes
    from pipelines.layout import Workdir
    from pipelines.presets import load_config

    overrides = [f"workdir={workdir}", f"eval_langs={langs}"]
    cfg = load_config("smoke", overrides)
    wd = Workdir.open(cfg.resolved_workdir())
    ds_hash, _ = study_hashes(cfg)
    for c in study_cells(cfg):
        d = cell_dir(wd, cfg, c, ds_hash)
        d.mkdir(parents=True, exist_ok=True)
        for name, kind in (("judged.parquet", "u"), ("judged_safe.parquet", "s")):
            n = 6 if kind == "u" else 2
            pl.DataFrame({"id": [f"{kind}/{k}" for k in range(n) for _ in (0, 1)],
                          "lang": ["en", "es"] * n,
                          "prompt": [f"{kind} QTEXT {k} {lang}" for k in range(n) for lang in ("en", "es")],
                          # The base and fine-tuned cells answer alike on even prompts: kept once.
                          "response": [f"{kind} ATEXT {k} {lang} {c.id if k % 2 else ''}"
                                       for k in range(n) for lang in ("en", "es")],
                          "outcome": ["complied"] * 2 * n, "label": [1] * 2 * n, "score": [0.9] * 2 * n,
                          "judge": ["refusal-phrase"] * 2 * n}).write_parquet(d / name)
        write_manifest(d, cell_id=c.id)
    return overrides


def test_labels_sample_writes_a_blind_csv_that_judge_labels_reads(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    overrides = finished_study(tmp_path / "wd")
    out = tmp_path / "es-sample.csv"
    assert main(["labels", "sample", "-c", "smoke", "--lang", "es", "--n", "8", "--out", str(out), "--seed", "3",
                 *overrides]) == 0
    printed = capsys.readouterr().out
    assert "QTEXT" not in printed and "ATEXT" not in printed  # counts and paths only
    assert str(out) in printed and "judge.labels={es: " in printed and "non_answer" in printed
    with out.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 8
    assert all(r["lang"] == "es" and r["label"] == "" and r["weak"] == "" for r in rows)
    assert {r["kind"] for r in rows} <= {"unsafe", "safe"}
    assert len({(r["kind"], r["source_id"], r["response"]) for r in rows}) == 8  # no answer twice
    assert "judge" not in out.read_text() and "0.9" not in out.read_text()  # blind: nothing a judge said
    # The same seed, the same sample; an existing file is never overwritten.
    again = tmp_path / "again.csv"
    assert main(["labels", "sample", "-c", "smoke", "--lang", "es", "--n", "8", "--out", str(again), "--seed", "3",
                 *overrides]) == 0
    assert again.read_text() == out.read_text()
    assert main(["labels", "sample", "-c", "smoke", "--lang", "es", "--out", str(out), *overrides]) == 2
    assert "exists" in capsys.readouterr().err
    # Labelled by a person, it is what judge.labels reads.
    for k, r in enumerate(rows):
        r["label"] = ("refused", "complied", "non_answer")[k % 3]
    write_csv(out, rows)
    ls = read_user_labels(out, "es")
    assert len(ls) == 8 and set(ls.outcomes) == {"refused", "complied", "non_answer"}


def test_labels_sample_refuses_an_unevaluated_language_and_an_unfinished_study(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cells import cell_dir, study_cells, study_hashes
    from pipelines.cli import main
    from pipelines.presets import load_config

    overrides = finished_study(tmp_path / "wd")
    assert main(["labels", "sample", "-c", "smoke", "--lang", "pt", *overrides]) == 2
    assert "does not evaluate 'pt'" in capsys.readouterr().err
    cfg = load_config("smoke", overrides)
    last = study_cells(cfg)[-1]
    (cell_dir(tmp_path / "wd", cfg, last, study_hashes(cfg)[0]) / "manifest.json").unlink()
    assert main(["labels", "sample", "-c", "smoke", "--lang", "es", "--out", str(tmp_path / "x.csv"),
                 *overrides]) == 2
    err = capsys.readouterr().err
    assert "has not finished" in err and last.id in err and "safedrift run -c smoke" in err
    assert not (tmp_path / "x.csv").exists()


def test_labelled_models_are_read_from_the_files_cells(tmp_path) -> None:
    from pipelines.evaluate.judges.labels import labelled_models

    f = tmp_path / "mine.csv"
    f.write_text("lang,kind,source_id,cell,prompt,response,label\n"
                 "es,unsafe,1,qwen-x__base,p,r,refused\nes,unsafe,2,qwen-x__es__s0__e1,p,r,complied\n"
                 "es,unsafe,3,,p,r,complied\n", encoding="utf-8")
    got = labelled_models({"es": str(f)})
    assert "qwen-x" in got and "" not in got and "user" not in got
