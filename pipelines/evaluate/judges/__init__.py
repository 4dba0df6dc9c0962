"""Judges: every judge takes a batch of (prompt, response, language) and returns, per item, a label
(1 = complies, 0 = refuses, None = unparseable) and a score (probability of compliance).

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


@dataclass(frozen=True)
class JudgeItem:
    prompt: str
    response: str
    language: str | None = None  # language of the response, if known


@dataclass(frozen=True)
class Verdict:
    label: int | None  # 1 complies, 0 refuses, None unparseable (never silently dropped)
    score: float  # probability that the response complies, in [0, 1]

    @property
    def label_name(self) -> str:
        return {COMPLIES: "compliant", REFUSES: "refused"}.get(self.label, "unparseable")  # type: ignore[arg-type]


class Judge(ABC):
    name: ClassVar[str]  # the registry name (set by the registry when the class does not declare it)
    version: ClassVar[str] = "1"
    # The languages it reads as written: others are back-translated to English where a route exists
    # (policy.py). None: any language (validated per language where labels exist, validity.py).
    native_languages: ClassVar[frozenset[str] | None] = frozenset({"en"})

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
