"""`safedrift prepare` is never silent: each step says what it does, with elapsed time and an ETA, and
again while it runs; the next prepare on the machine estimates from what this one measured."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipelines import prepare as prep
from pipelines.presets import load_config


def test_a_running_step_reports_elapsed_and_eta_and_teaches_the_next_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prep, "LEARN_MIN_S", 0.05)
    lines: list[str] = []
    record: dict[str, float] = {}
    progress = prep.StepProgress([("model m", 100.0), ("judge j", 60.0)], lines.append, record, every_s=0.05)
    with progress.step(0):
        time.sleep(0.3)
    assert lines[0].startswith("prepare [1/2] model m: starting") and "ETA 2:40" in lines[0]
    beats = [x for x in lines if "still running" in x]
    assert len(beats) >= 2 and all("elapsed" in b and "ETA" in b for b in beats)
    assert lines[-1].startswith("prepare [1/2] model m: done in 0:00") and lines[-1].endswith("ETA 1:00")
    assert 0.25 <= record["model m"] < 5
    # A step that did (almost) no work, e.g. its cache was there, leaves the estimate it had.
    monkeypatch.setattr(prep, "LEARN_MIN_S", 10.0)
    with progress.step(1):
        pass
    assert "judge j" not in record


def test_prepare_prints_every_step_and_records_its_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prep, "LEARN_MIN_S", 0.0)
    cfg = load_config("smoke", [f"workdir={tmp_path / 'wd'}", "judge.agreement=false"])
    lines: list[str] = []
    took = prep.prepare(cfg, out=lines.append)
    assert set(took) == {"model tiny-llama", "judge refusal-phrase"}
    starts = [x for x in lines if x.endswith(("starting",)) or ": starting ·" in x]
    assert [x.split(":")[0] for x in starts] == ["prepare [1/2] model tiny-llama", "prepare [2/2] judge refusal-phrase"]
    assert sum("done in" in x for x in lines) == 2
    times = json.loads((tmp_path / "cache" / "prepare-times.json").read_text())
    assert set(times) == set(took)


def test_a_judge_that_fits_nothing_after_the_first_is_estimated_in_seconds() -> None:
    # The laptop: trained-e5 fits and scores per eval language; the refusal-phrase judge after it reuses the
    # translated labels (1 s measured), so its ETA must not be the trained judge's 4 minutes.
    cfg = load_config("laptop", [])
    assert prep._judge_estimate("trained-e5", 0, cfg) == prep.JUDGE_S_PER_LANG * len(cfg.eval_langs)
    assert prep._judge_estimate("refusal-phrase", 1, cfg) == 5.0
    assert prep._judge_estimate("trained-minilm", 1, cfg) == prep.JUDGE_S_PER_LANG * len(cfg.eval_langs)
