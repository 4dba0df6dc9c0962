"""`safedrift prepare`: the one-time work of a preset (model conversion, judge fit and agreement) is done
once, cached, and a second call is a no-op."""

from __future__ import annotations

import json


def test_prepare_caches_models_and_judge_agreement(tmp_path, monkeypatch, capsys) -> None:
    from pipelines.cli import main

    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "cache"))
    assert main(["prepare", "-c", "smoke", "judge.agreement_limit=40"]) == 0
    first = capsys.readouterr().out
    assert "prepare [1/2] model tiny-llama: starting" in first and "ETA" in first
    assert "prepared: model tiny-llama" in first and "judge refusal-phrase" in first
    # The judge's agreement with people per eval language (en, es), measured once and cached.
    agreements = list((tmp_path / "cache" / "judges").glob("validity-*.json"))
    assert len(agreements) == 1
    rows = json.loads(agreements[0].read_text())["rows"]
    en = next(r for r in rows if r["lang"] == "en" and r["source"] == "human")
    assert en["n"] == 40 and 0.0 <= en["accuracy"] <= 1.0
    assert {r["lang"] for r in rows} >= {"en", "es"}
    mtime = agreements[0].stat().st_mtime
    assert main(["prepare", "-c", "smoke", "judge.agreement_limit=40"]) == 0
    assert agreements[0].stat().st_mtime == mtime  # cached: not scored again
