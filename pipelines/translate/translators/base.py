"""The `Translator` base class every translator subclasses, and the language pairs a many-to-many model
covers. The registry (the package's ``__init__``) names the translators; they import their base from here,
so no translator imports the registry that names it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from pipelines.registries.languages import LANGUAGES


def all_pairs() -> set[tuple[str, str]]:
    """Every ordered pair of registered languages: what a many-to-many model translator covers."""
    codes = LANGUAGES.names()
    return {(a, b) for a in codes for b in codes if a != b}


class Translator(ABC):
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def pairs(cls) -> set[tuple[str, str]]:
        """Direct (source, target) pairs this translator can do on this machine."""

    # Whether an actor running this translator should get a GPU when the cluster has one.
    prefers_gpu: ClassVar[bool] = False

    @classmethod
    def version(cls) -> str:
        return "1"

    def cache_version(self) -> str:
        """What the translation cache keys on besides the text and languages: the class's version plus
        whatever instance options change the output (the model for model-based translators)."""
        return self.version()

    @abstractmethod
    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]: ...
