from __future__ import annotations

import polars as pl

from pipelines.registries.langid import detect_lang
from pipelines.translate.qa import check, policy_mask, qa_table

EN = "I would like to write a long letter to my old friend about the weather."
ES = "Me gustaría escribir una carta larga a mi viejo amigo sobre el tiempo."


def test_language_id_is_offline_and_right() -> None:
    assert detect_lang(ES)[0] == "es"
    assert detect_lang("我想给我的老朋友写一封关于天气的长信。")[0] == "zh"
    assert detect_lang(EN)[0] == "en"


def test_flags() -> None:
    good = check([EN], [ES], "en", "es", [EN])
    assert good["qa_flags"] == "" and good["qa_lang"] == "es" and good["qa_chrf"] == 100.0
    assert check([EN], [""], "en", "es", None)["qa_flags"] == "empty"
    assert set(check([EN], [EN], "en", "es", None)["qa_flags"].split(",")) == {"unchanged", "lang_mismatch"}
    assert check([EN], ["Me gustaría"], "en", "es", None)["qa_flags"] == "truncated"
    # Chinese is denser than English: a faithful translation a third as long is not "truncated".
    assert "truncated" not in check([EN], ["我想给我的老朋友写一封关于天气的长信。"], "en", "zh", None)["qa_flags"]
    # A bad back-translation scores low; short outputs are not language-identified.
    assert check([EN], [ES], "en", "es", ["Something else entirely."])["qa_chrf"] < 30
    assert check(["Hi."], ["Hola."], "en", "es", None)["qa_lang"] == ""
    # An empty source field (Alpaca's blank input) is not checked.
    assert check([EN, ""], [ES, ""], "en", "es", None)["qa_flags"] == ""


def test_policy_and_table() -> None:
    df = pl.DataFrame({"qa_flags": ["", "empty", "lang_mismatch", "truncated,lang_mismatch", ""],
                       "qa_chrf": [80.0, None, 50.0, 10.0, None]})
    assert policy_mask(df, {"drop_flags": ["empty"]}).to_list() == [True, False, True, True, True]
    assert policy_mask(df, {"drop_flags": ["empty"], "require_lang_id": True}).to_list() == [
        True, False, False, False, True]
    assert policy_mask(df, {"drop_flags": [], "min_chrf": 40}).to_list() == [True, True, True, False, True]
    t = qa_table(df, {"drop_flags": ["empty"], "min_chrf": 40})
    assert (t["rows"], t["flagged"], t["empty"], t["lang_mismatch"], t["truncated"]) == (5, 3, 1, 2, 1)
    assert (t["chrf_n"], t["chrf_below_min"], t["kept_by_policy"]) == (3, 1, 3)
