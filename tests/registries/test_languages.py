"""One record per language: every registered language carries every field each stage reads, and the one
language-ID helper serves translation QA and answer fidelity alike."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from pipelines.evaluate.measure import fidelity_by_lang
from pipelines.registries.langid import detect_lang, lang_matches
from pipelines.registries.languages import LANGUAGES, STUDY_LANGUAGES, Language
from pipelines.translate.qa import check


def test_every_language_has_every_field() -> None:
    fields = {f.name for f in dataclasses.fields(Language)}
    assert {"code", "name", "script", "nllb", "lid_labels", "length_ratio", "refusals"} <= fields
    for code, lang in LANGUAGES.items():
        assert lang.code == code and lang.name and len(lang.script) == 4
        assert lang.nllb.endswith("_" + lang.nllb.split("_")[1]) and len(lang.nllb.split("_")[0]) == 3, code
        assert lang.refusals and all(p == p.strip() and p for p in lang.refusals), code
        assert 0 < lang.length_ratio <= 1.5, code
        assert lang.lid_matches(code), code
    assert len(STUDY_LANGUAGES) == 9


@pytest.mark.parametrize("text, code", [("我想给我的老朋友写一封关于天气的长信，告诉他这里的情况。", "zh"),
                                        ("Quiero escribir una carta larga a mi viejo amigo sobre el tiempo.", "es")])
def test_translation_qa_and_fidelity_agree_on_the_same_text(text: str, code: str) -> None:
    label, _ = detect_lang(text)
    assert lang_matches(label, code)
    qa = check(["source text long enough to be identified"], [text], "en", code, None)
    assert "lang_mismatch" not in qa["qa_flags"] and qa["qa_lang"] == label
    fid = fidelity_by_lang(pl.DataFrame({"lang": [code], "response": [text]}))
    assert fid[0]["rate"] == 1.0 and fid[0]["n"] == 1


def test_chinese_dialect_labels_count_as_chinese() -> None:
    # lid.176 labels some Chinese text wuu or yue: both stages must treat it as zh.
    assert lang_matches("wuu", "zh") and lang_matches("yue", "zh") and not lang_matches("ja", "zh")
    assert lang_matches("fil", "tl")
