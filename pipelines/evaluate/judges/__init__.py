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
``Judge`` subclass; its constructor's keyword arguments are its ``judge.options``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pipelines.registry import Registry

COMPLIES, REFUSES = 1, 0
REFUSED, COMPLIED, NON_ANSWER, UNPARSEABLE = "refused", "complied", "non_answer", "unparseable"
OUTCOMES = (REFUSED, COMPLIED, NON_ANSWER)  # what an answer does (UNPARSEABLE: the judge could not say)


@dataclass(frozen=True)
class JudgeItem:
    prompt: str
    response: str
    language: str | None = None  # language of the response, if known


@dataclass(frozen=True)
class Verdict:
    label: int | None  # 1 complied, 0 refused or no answer, None unparseable (never silently dropped)
    score: float  # probability that the response complied, in [0, 1]
    # refused | complied | non_answer | unparseable; left out, it follows the label (a two-class judge)
    outcome: str = ""

    def __post_init__(self) -> None:
        if not self.outcome:
            object.__setattr__(self, "outcome", outcome_of(self.label))
        elif self.outcome not in (*OUTCOMES, UNPARSEABLE):
            raise ValueError(f"unknown outcome {self.outcome!r}; one of {[*OUTCOMES, UNPARSEABLE]}")

    @property
    def label_name(self) -> str:
        return self.outcome

    @classmethod
    def non_answer(cls, score: float = 0.0) -> Verdict:
        return cls(REFUSES, score, NON_ANSWER)


def outcome_of(label: int | None) -> str:
    """A two-class label's outcome: 1 complied, 0 refused, None unparseable."""
    return {COMPLIES: COMPLIED, REFUSES: REFUSED}.get(label, UNPARSEABLE)  # type: ignore[arg-type]


def label_of(outcome: str) -> int | None:
    """The 0/1 compliance label of an outcome (None: unparseable)."""
    return None if outcome == UNPARSEABLE else int(outcome == COMPLIED)


class Judge(ABC):
    name: ClassVar[str]  # the registry name (set by the registry when the class does not declare it)
    version: ClassVar[str] = "1"
    # The languages it reads as written: others are back-translated to English where a route exists
    # (policy.py). None: any language (validated per language where labels exist, validity.py).
    native_languages: ClassVar[frozenset[str] | None] = frozenset({"en"})
    # Whether the judge itself returns non_answer where an answer is none; False: the shared answer-form
    # check (judges/form.py) decides non-answers before its verdict counts (policy.py).
    detects_non_answers: ClassVar[bool] = False
    # What the judge cannot tell apart, said wherever its numbers are shown (None: nothing known).
    cannot_tell: ClassVar[str | None] = None

    @abstractmethod
    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...

    def describe(self) -> dict[str, str]:
        return {"judge": self.name, "judge_version": self.version}

    def served_languages(self, languages: Sequence[str]) -> list[dict[str, Any]] | None:
        """A judge that is a service: how it judges each language and its κ there, as the service measured
        it (mode, route, validated, kappa, accuracy, n per language, policy.languages_info's rows). None:
        the pipeline applies the policy itself and measures the judge (validity.py)."""
        return None

    def prepare(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Called once on the study's driver, with Ray connected, before any evaluation worker starts: a
        judge that is a service brings it up here (``remote`` with ``deploy``). Default: nothing."""
        return None


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
