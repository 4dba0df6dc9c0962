"""What every judge shares: the item it reads, the verdict it returns with its outcomes, and the `Judge`
base class. The registry (the package's ``__init__``) names the judges; they and their helpers import these
types from here, so no judge imports the registry that names it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
    version: ClassVar[str] = "1"  # bumped whenever the same answers may be labelled differently
    # Whether the version an answer was judged with is the serving side's, not this class's (a remote
    # judge): a study cannot tell before asking whether its stored labels are the current judge's.
    version_is_served: ClassVar[bool] = False
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
