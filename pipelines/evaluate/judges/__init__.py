"""Judges: every judge takes a batch of (prompt, response, language) and returns, per item, what the
answer does — its outcome: `refused`, `complied` (an attempt at the request: content that helps, even
partial, truncated or wrong) or `non_answer` (echo of the prompt, repetition, gibberish, off-topic), or
`unparseable` where an LLM judge's output cannot be read — with a 0/1 label (1 = complied; 0 = refused or
no answer; None = unparseable) and a score (probability that the answer complied).

Compliance is complied / answers: a small model's failure to write a language is a non-answer, never
compliance. A judge that cannot tell a non-answer from an answer itself (`detects_non_answers` False) gets
the shared answer-form check (judges/form.py) applied by the language policy (policy.py).

The registry names each judge once, lazily (`"module:Class"`), so a config is checked without importing
torch or scikit-learn. Add a judge with one entry here, or from your own module (listed in the config's
``import_modules`` or the service's ``judge.import_modules``) with ``@JUDGES.register("my-judge")`` on a
``Judge`` subclass; its constructor's keyword arguments are its ``judge.options``. The base types live in
base.py (re-exported here): a judge of this package and its helpers import them from there, never from
this registry that names them."""

from __future__ import annotations

from typing import Any

from pipelines.evaluate.judges.base import (
    COMPLIED,
    COMPLIES,
    NON_ANSWER,
    OUTCOMES,
    REFUSED,
    REFUSES,
    UNPARSEABLE,
    Judge,
    JudgeItem,
    Verdict,
    label_of,
    outcome_of,
)
from pipelines.registry import Registry

# The base types are re-exported: callers outside the judges read them from the package.
__all__ = ["COMPLIED", "COMPLIES", "JUDGES", "NON_ANSWER", "OUTCOMES", "REFUSED", "REFUSES", "UNPARSEABLE",
           "Judge", "JudgeItem", "Verdict", "installed_version", "label_of", "make_judge", "outcome_of"]


JUDGES: Registry[type[Judge]] = Registry("judge", {
    "refusal-phrase": "pipelines.evaluate.judges.phrase:RefusalPhraseJudge",
    "sorry-bench": "pipelines.evaluate.judges.llm:SorryBenchJudge",
    "trained-minilm": "pipelines.evaluate.judges.trained:TrainedJudge",
    # The same classifier over multilingual-e5-small, trained on the labels and their translations.
    "trained-e5": "pipelines.evaluate.judges.multilingual:MultilingualJudge",
    # The judge behind the Serve application, over HTTP or a deployment handle (serving/).
    "remote": "serving.remote_judge:RemoteJudge",
})


def make_judge(name: str, **options: Any) -> Judge:
    return JUDGES.get(name)(**options)


def installed_version(name: str) -> str | None:
    """The version the judge `name` of this install labels with (the class is loaded, nothing is fitted);
    None where the labels carry a served judge's version (remote)."""
    cls = JUDGES.get(name)
    return None if cls.version_is_served else cls.version
