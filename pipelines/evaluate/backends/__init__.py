"""Generation backends: what answers a cell's prompts. One registry entry each (lazy `"module:Class"`),
chosen per preset by ``generate.backend``, with constructor options in ``generate.options`` (checked
when the config loads). transformers runs anywhere (CPU by default); fastcpu is a hand-written decoding
loop for Llama-family models on CPU (bf16 matmuls where the CPU has them); vllm needs a CUDA GPU and the
`gpu` extra. A user's backend registers from its own module (``import_modules``) with
``@BACKENDS.register("name")`` on a ``Backend`` subclass.

A backend serves every cell of one base model: it is made once per evaluation worker over the worker's
``LoadedModel`` (pipelines/evaluate/weights.py) and told which cell's adapter answers with ``use`` —
peft switches adapters on the shared copy (transformers), the fused weights are rebuilt with the
adapter's delta (fastcpu), or each request names its LoRA (vLLM)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from pipelines.config import GenerateConfig
from pipelines.evaluate.weights import LoadedModel
from pipelines.registry import Registry


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


BACKENDS: Registry[type[Backend]] = Registry("generation backend", {
    "transformers": "pipelines.evaluate.backends.transformers:TransformersBackend",
    "vllm": "pipelines.evaluate.backends.vllm:VllmBackend",
    "fastcpu": "pipelines.evaluate.backends.fastcpu:FastCpuBackend",
})


def make_backend(model: LoadedModel, gcfg: GenerateConfig) -> Backend:
    return BACKENDS.get(gcfg.backend)(model, gcfg, **gcfg.options)
