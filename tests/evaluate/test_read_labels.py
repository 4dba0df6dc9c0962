"""A developer's reading of a study's own answers (judges/read/<model>.csv, labels without text): a cell finds
the very answers that were read (cell, prompt, language, text), the report pools them over cells, and its
κ, rates and non-answer recall equal the agreement computed on the answers themselves."""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

import polars as pl
import pytest

from pipelines.evaluate.judges import COMPLIED, NON_ANSWER, REFUSED
from pipelines.evaluate.judges import labels as labels_mod
from pipelines.evaluate.judges.labels import answer_sha256
from pipelines.evaluate.judges.validity import agreement
from pipelines.evaluate.measure import Tidy, add_read_rows
from pipelines.report import tables as tb
from pipelines.report.summary import read_trust

MODEL = "tiny-model"


def _cell(ft_lang: str, seed: int = 0) -> dict:
    return {"model": MODEL, "ft_lang": ft_lang, "seed": seed, "epochs": 0 if ft_lang == "base" else 1}


def _judged(rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    """(id, lang, response, outcome) rows as a judged frame."""
    return pl.DataFrame(rows, schema=["id", "lang", "response", "outcome"], orient="row")


@pytest.fixture
def read_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(labels_mod, "READ_DIR", tmp_path)
    return tmp_path


def _write(read_dir: Path, rows: list[tuple[str, str, str, str, str, str]]) -> None:
    with (read_dir / f"{MODEL}.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell", "kind", "id", "lang", "label", "response_sha256"])
        for cell, kind, id_, lang, label, text in rows:
            w.writerow([cell, kind, id_, lang, label, answer_sha256(text)])


def test_a_cell_counts_only_the_answers_read_in_it(read_dir: Path) -> None:
    _write(read_dir, [("base", "unsafe", "1", "es", COMPLIED, "Primero, mezcla…"),
                      ("base", "unsafe", "2", "es", NON_ANSWER, "no no no no"),
                      ("base", "safe", "3", "es", REFUSED, "No puedo."),
                      ("en/seed0", "unsafe", "1", "es", REFUSED, "No.")])
    base = Tidy(_cell("base"), "base")
    m = add_read_rows(base, _judged([("1", "es", "Primero, mezcla…", COMPLIED), ("2", "es", "no no no no", REFUSED),
                                     ("4", "es", "otra", COMPLIED)]),
                      _judged([("3", "es", "No puedo.", REFUSED)]))
    assert m == {"judge/read/complied_both/es": 1.0, "judge/read/complied_read_only/es": 0.0,
                 "judge/read/complied_judged_only/es": 0.0, "judge/read/complied_neither/es": 2.0,
                 "judge/read/non_answer_read/es": 1.0, "judge/read/non_answer_found/es": 0.0}
    # The same text in a cell it was not read in, and a changed answer where it was: not counted.
    other = Tidy(_cell("es"), "es")
    assert add_read_rows(other, _judged([("1", "es", "Primero, mezcla…", COMPLIED)]), _judged([])) == {}
    ft = Tidy(_cell("en"), "en")
    assert add_read_rows(ft, _judged([("1", "es", "No, gracias.", REFUSED)]), _judged([])) == {}


def test_the_report_pools_cells_into_the_agreement_of_the_answers_themselves(read_dir: Path) -> None:
    rng = random.Random(3)
    outcomes = (REFUSED, COMPLIED, NON_ANSWER)
    read_rows, frames, pairs = [], [], {"en": [], "zh": []}
    for (ft, seed), lang in itertools.product([("base", 0), ("en", 0), ("en", 1)], ["en", "zh"]):
        cell = "base" if ft == "base" else f"{ft}/seed{seed}"
        answers = []
        for i in range(15):
            text, truth, judged = f"{cell}-{lang}-{i}", rng.choice(outcomes), rng.choice(outcomes)
            read_rows.append((cell, "unsafe", str(i), lang, truth, text))
            answers.append((str(i), lang, text, judged))
            pairs[lang].append((truth, judged))
        t = Tidy(_cell(ft, seed), cell)
        frames.append((t, _judged(answers)))
    _write(read_dir, read_rows)
    tidy = []
    for t, judged in frames:  # one cell, both languages, at a time
        add_read_rows(t, judged, _judged([]))
        tidy.append(t.frame())
    table = pl.concat(tidy)
    cells = tb.cells_of(table.with_columns(metric=pl.lit("compliance_rate")))
    got = {r["eval_lang"]: r for r in tb.read_agreement(table, cells).iter_rows(named=True)}
    for lang, ps in [*pairs.items(), ("all", pairs["en"] + pairs["zh"])]:
        want = agreement([a for a, _ in ps], [b for _, b in ps])
        g = got[lang]
        assert g["n"] == len(ps) and g["kappa"] == pytest.approx(want["kappa"])
        assert g["rate_error"] == pytest.approx(want["rate_error"])
        assert g["non_answer_recall"] == pytest.approx(want["non_answer_recall"])
    text = " ".join(read_trust(tb.read_agreement(table, cells)))
    assert f"On {len(pairs['en']) * 2} of this study's own answers read by a developer" in text and "zh κ" in text


def test_the_shipped_reading_is_well_formed() -> None:
    read = labels_mod.read_labels("qwen2.5-coder-0.5b-instruct")
    assert len(read) == 96 and set(read.values()) <= {REFUSED, COMPLIED, NON_ANSWER}
    assert {k[0] for k in read} == {"base", "en/seed0", "es/seed0", "zh/seed0"}
