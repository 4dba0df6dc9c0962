"""The `Backend` base class every generation backend subclasses. The registry (the package's
``__init__``) names the backends; they import their base from here, so no backend imports the registry
that names it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from pipelines.config import GenerateConfig
from pipelines.evaluate.weights import LoadedModel


class Backend(ABC):
    """Answers prompts with one base model, loaded once, as the base or as base + the adapter `use` set."""

    name: ClassVar[str]

    def __init__(self, model: LoadedModel, gcfg: GenerateConfig) -> None:
        self.model, self.gcfg = model, gcfg
        self.adapter: Path | None = None

    @property
    def model_dir(self) -> Path:
        return self.model.dir

    def use(self, adapter: Path | None) -> None:
        """Which adapter answers from now on (None: the base model)."""
        self.adapter = adapter

    def batches(self, prompts: list[str]) -> list[list[int]]:
        """Row indices grouped into the calls `answer` gets (each group's answers are written as one part,
        so an interrupted generation resumes there). Default: everything at once."""
        return [list(range(len(prompts)))] if prompts else []

    @abstractmethod
    def answer(self, prompts: list[str]) -> list[str]:
        """One answer per prompt, in order, each to the prompt as the user's single chat turn."""

    def close(self) -> None:
        """Frees what the backend holds beyond the shared LoadedModel (an engine); default: nothing."""
        return None  # noqa: B027 - optional hook, deliberately not abstract
