"""Generation backends: what answers a cell's prompts. One registry entry each (lazy `"module:Class"`),
chosen per preset by ``generate.backend``, with constructor options in ``generate.options`` (checked
when the config loads). transformers runs anywhere (CPU by default); fastcpu is a hand-written decoding
loop for Llama-family models on CPU (bf16 matmuls where the CPU has them); vllm needs a CUDA GPU and the
`gpu` extra. A user's backend registers from its own module (``import_modules``) with
``@BACKENDS.register("name")`` on a ``Backend`` subclass."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from pipelines.config import GenerateConfig
from pipelines.registry import Registry


class Backend(ABC):
    """Answers prompts with one model (a base model, plus a LoRA adapter or not), loaded once."""

    name: ClassVar[str]

    def __init__(self, model_dir: Path, adapter_dir: Path | None, gcfg: GenerateConfig) -> None:
        self.model_dir, self.adapter_dir, self.gcfg = model_dir, adapter_dir, gcfg

    def batches(self, prompts: list[str]) -> list[list[int]]:
        """Row indices grouped into the calls `answer` gets (each group's answers are written as one part,
        so an interrupted generation resumes there). Default: everything at once."""
        return [list(range(len(prompts)))] if prompts else []

    @abstractmethod
    def answer(self, prompts: list[str]) -> list[str]:
        """One answer per prompt, in order, each to the prompt as the user's single chat turn."""


BACKENDS: Registry[type[Backend]] = Registry("generation backend", {
    "transformers": "pipelines.evaluate.backends.transformers:TransformersBackend",
    "vllm": "pipelines.evaluate.backends.vllm:VllmBackend",
    "fastcpu": "pipelines.evaluate.backends.fastcpu:FastCpuBackend",
})


def make_backend(model_dir: Path, adapter_dir: Path | None, gcfg: GenerateConfig) -> Backend:
    return BACKENDS.get(gcfg.backend)(model_dir, adapter_dir, gcfg, **gcfg.options)
