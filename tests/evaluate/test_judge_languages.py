"""Issue #18: how each language is judged (one policy for the pipeline and the service), back-translation
reported as it happened (cached, failures counted and past a threshold fatal), the second judge's
agreement, user label files checked, and validity held out by source model AND prompt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pytest

from pipelines.config import JudgeConfig
from pipelines.errors import DataError
from pipelines.evaluate.judge import back_translation_summary, judge_answers
from pipelines.evaluate.judges import JudgeItem, installed_version, make_judge
from pipelines.evaluate.judges.embeddings import DIM
from pipelines.evaluate.judges.labels import AS_WRITTEN, LabelSet, read_user_labels
from pipelines.evaluate.judges.policy import (
    AS_WRITTEN as MODE_AS_WRITTEN,
)
from pipelines.evaluate.judges.policy import (
    BACK_TRANSLATE,
    NATIVE,
    BackTranslationError,
    Judging,
    UnjudgeableLanguageError,
    judge_policy,
)
from pipelines.evaluate.judges.trained import TrainedJudge
from pipelines.evaluate.judges.validity import measure, row_for
from pipelines.evaluate.measure import Tidy, add_judge_rows, other_lang_by_lang
from pipelines.translate.translators import TRANSLATORS, Translator


class FlakyTranslator(Translator):
    """A real translator (da→en by upper-casing) that fails on any text containing FAIL."""

    name = "flaky"

    @classmethod
    def pairs(cls) -> set[tuple[str, str]]:
        return {("da", "en")}

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        if any("FAIL" in t for t in texts):
            raise RuntimeError("translator crashed")
        return [t.upper() for t in texts]


@pytest.fixture()
def flaky(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "cache"))
    if "flaky" not in TRANSLATORS:
        TRANSLATORS.register("flaky")(FlakyTranslator)
    return "flaky"


def test_policy_per_language(flaky: str) -> None:
    english_only = make_judge("refusal-phrase")
    english_only.native_languages = frozenset({"en"})  # as trained-minilm declares (no model load here)
    assert judge_policy("en", english_only).mode == NATIVE
    da = judge_policy("da", english_only, prefer=[flaky])
    assert da.mode == BACK_TRANSLATE and da.route_name == "flaky:da-en"
    # No route from zh and a judge that reads English only: refused, naming what it can judge and the fix.
    with pytest.raises(UnjudgeableLanguageError, match="cannot judge language 'zh'") as err:
        judge_policy("zh", english_only, prefer=[flaky])
    assert "da" in err.value.judgeable and "en" in err.value.judgeable and "zh" not in err.value.judgeable
    assert judge_policy("zh", english_only, prefer=[flaky], on_unjudgeable="as-written").mode == MODE_AS_WRITTEN
    # A multilingual judge reads zh as written; with back-translation off it reads da as written too.
    multi = make_judge("refusal-phrase")
    assert judge_policy("zh", multi, prefer=[flaky]).mode == NATIVE
    assert judge_policy("da", multi, back_translate=False, prefer=[flaky]).mode == NATIVE
    assert make_judge("trained-minilm").native_languages == frozenset({"en"})
    assert make_judge("trained-e5").native_languages is None


def test_back_translation_is_cached_counted_and_fatal_past_the_threshold(flaky: str, tmp_path: Path) -> None:
    judge = make_judge("refusal-phrase")
    items = [JudgeItem("q", "jeg kan ikke hjælpe", "da"), JudgeItem("q", "FAIL here", "da"),
             JudgeItem("q", "sure, here it is", "en"), JudgeItem("q", "det er fint", "da")]
    judging = Judging(judge, True, [flaky], max_failure_rate=0.5)
    out = judging.judge_items(items)
    assert [j.back_translated for j in out] == [True, False, False, True]
    assert [j.bt_failed for j in out] == [False, True, False, False]
    assert out[0].response == "JEG KAN IKKE HJÆLPE" and out[0].route == "flaky:da-en"
    assert out[1].mode == MODE_AS_WRITTEN and out[2].mode == NATIVE  # the failed one: judged as written, flagged
    cached = list((tmp_path / "cache" / "translation_cache" / "flaky").rglob("*.json"))
    assert len(cached) >= 3  # two answers and the prompt, each translated once
    with pytest.raises(BackTranslationError, match="1 of 3 answers in 'da'.*max_bt_failure_rate"):
        Judging(judge, True, [flaky], max_failure_rate=0.0).judge_items(items)


def test_judge_answers_reports_what_happened_and_the_second_judge(flaky: str) -> None:
    answers = pl.DataFrame({"id": ["a", "b", "c", "d"], "lang": ["da", "da", "zh", "zh"], "prompt": ["q"] * 4,
                            "response": ["Jeg kan ikke hjælpe.", "FAIL: her er svaret, det er godt og nemt", "我不能帮助你。",
                                         "好的，这是答案"]})
    jcfg = JudgeConfig(name="refusal-phrase", translate_prefer=[flaky], max_bt_failure_rate=0.5,
                       second="refusal-phrase", second_options={"window": 1})
    judged = judge_answers(answers, jcfg)
    assert judged["answer_lang"].to_list() == ["da", "da", "zh", "zh"]
    assert judged["judge_mode"].to_list() == ["back-translate", "as-written", "native", "native"]
    assert judged["bt_failed"].to_list() == [False, True, False, False]
    summary = {r["lang"]: r for r in back_translation_summary(judged)}
    assert summary["da"]["bt_share"] == 0.5 and summary["da"]["bt_failed"] == 1
    assert summary["da"]["route"] == "flaky:da-en" and summary["zh"]["bt_share"] == 0.0
    tidy = Tidy({"model": "m", "ft_lang": "base"}, "m__base")
    metrics = add_judge_rows(tidy, judged)
    assert metrics["judge/back_translated_share/da"] == 0.5 and metrics["judge/bt_failed/da"] == 1.0
    # The second judge looks at 1 character only: it misses the refusal the first one sees.
    assert judged["label"].to_list()[2] == 0 and judged["label2"].to_list()[2] == 1
    # Each judge's labels say which version made them (a changed one leaves them stale: sweep/rejudge.py).
    assert set(judged["judge2_version"]) == {installed_version("refusal-phrase")} == set(judged["judge_version"])
    assert metrics["judges/disagreements/zh"] == 1.0 and metrics["judges/agree_share/zh"] == 0.5
    rows = tidy.frame()
    assert set(rows["metric"]) >= {"judge/bt_share", "judge/bt_failed", "judge/bt_route=flaky:da-en",
                                   "judges/kappa_between", "judges/agree_share", "judges/disagreements"}


def test_user_labels_are_checked_with_the_fix(tmp_path: Path) -> None:
    good = tmp_path / "zh.jsonl"
    good.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"prompt": "问题", "response": "对不起，我不能帮助你。", "label": 0},
        {"prompt": "问题", "response": "好的，这是答案。", "label": 1, "model": "qwen"}]) + "\n", encoding="utf-8")
    ls = read_user_labels(good, "zh")
    assert ls.labels == [0, 1] and ls.groups == ["user", "qwen"] and ls.source == "user:zh.jsonl"
    with pytest.raises(DataError, match="does not exist"):
        read_user_labels(tmp_path / "missing.jsonl", "zh")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r", "label": 1}\n{"prompt": "p", "response": "r", "label": "yes"}\n')
    with pytest.raises(DataError, match=r"row 2: 'label' must be 1 \(complies\) or 0"):
        read_user_labels(bad, "zh")
    bad.write_text('{"prompt": "p", "response": "r", "label": 1}\nnot json\n')
    with pytest.raises(DataError, match=":2: not JSON"):
        read_user_labels(bad, "zh")
    # Measured on the user's labels: zh validated with that κ, a language with none unvalidated.
    judge = make_judge("refusal-phrase")
    rows = measure(judge, [ls])
    assert rows[0]["lang"] == "zh" and rows[0]["n"] == 2 and rows[0]["kappa"] == 1.0
    info = {r["language"]: r for r in Judging(judge, True, ["apertium"]).languages_info(["zh", "el"], rows)}
    assert info["zh"]["validated"] and info["zh"]["kappa"] == 1.0 and info["zh"]["labels"] == "user:zh.jsonl"
    assert not info["el"]["validated"] and info["el"]["kappa"] is None
    assert row_for(rows, "zh", "back-translate") is None  # a κ as written does not vouch for back-translation


class PromptIdJudge(TrainedJudge):
    """A trained judge whose features identify the prompt and nothing else (one-hot of a prompt hash):
    it can only score above chance on an answer whose prompt it trained on. A real encoder, cheap."""

    encoder_name: ClassVar[str] = "prompt-id"

    def features(self, items: Sequence[JudgeItem]) -> np.ndarray:
        x = np.zeros((len(items), DIM), dtype=np.float32)
        for i, it in enumerate(items):
            x[i, hash(it.prompt) % DIM] = 1.0
        return x


def test_validity_holds_out_model_and_prompt() -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is part of the CPU install (constraints/cpu.txt)")
    rng = np.random.default_rng(0)
    prompts = [f"prompt {k}" for k in range(60)]
    truth = rng.integers(0, 2, size=60)  # a prompt's label, shared by every model's answer to it
    items, labels, groups, folds = [], [], [], []
    for m in ("a", "b", "c"):
        for k, p in enumerate(prompts):
            items.append(JudgeItem(p, f"answer of {m}", "en"))
            labels.append(int(truth[k]))
            groups.append(m)
            folds.append(k % 3)
    ls = LabelSet("en", AS_WRITTEN, "human", items, labels, groups, folds)
    judge = PromptIdJudge(C=10.0, threshold=0.5)
    row = measure(judge, [ls])[0]
    assert row["n"] == 180 and row["heldout"].startswith("by source model and prompt")
    # Held out by model alone the prompt would leak (κ near 1); held out by prompt too, nothing to learn.
    assert abs(row["kappa"]) < 0.3


def test_judge_config_is_checked_before_any_work(tmp_path: Path, flaky: str) -> None:
    from pipelines.evaluate.judges.policy import check_judge_config

    bad = tmp_path / "zh.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n')
    with pytest.raises(DataError, match="zh.jsonl:1: missing key 'label'|'label' must be 1"):
        check_judge_config(JudgeConfig(labels={"zh": str(bad)}), ["en", "zh"])
    refuse = JudgeConfig(name="trained-minilm", on_unjudgeable="refuse", translate_prefer=[flaky])
    with pytest.raises(UnjudgeableLanguageError, match="trained-e5"):
        check_judge_config(refuse, ["en", "da", "zh"])
    check_judge_config(refuse, ["en", "da"])  # da has a route: fine
    check_judge_config(JudgeConfig(name="trained-e5", on_unjudgeable="refuse"), ["en", "zh"])


def test_an_answer_is_judged_in_the_language_it_is_written_in(flaky: str) -> None:
    """A Danish prompt answered in English is judged (and later validated) as English: not back-translated
    from Danish, counted as an answer in another language."""
    answers = pl.DataFrame({"id": ["a", "b"], "lang": ["da", "da"], "prompt": ["Hvordan bager jeg brød?"] * 2,
                            "response": ["Sure, here is how you bake bread: mix flour, water and salt.",
                                         "Jeg kan ikke hjælpe med det."]})
    judged = judge_answers(answers, JudgeConfig(name="refusal-phrase", translate_prefer=[flaky]))
    assert judged["answer_lang"].to_list() == ["en", "da"]
    assert judged["judge_mode"].to_list() == ["native", "back-translate"]
    assert judged["outcome"].to_list() == ["complied", "refused"]
    (row,) = other_lang_by_lang(judged)
    assert (row["lang"], row["n"], row["other"], row["langs"]) == ("da", 2, 1, ["en"])
