"""Generation backends: what answers a cell's prompts. One registry entry each (lazy `"module:Class"`),
chosen per preset by ``generate.backend``, with constructor options in ``generate.options`` (checked
when the config loads). transformers runs anywhere (CPU by default); fastcpu is a hand-written decoding
loop for Llama-family models on CPU (bf16 matmuls where the CPU has them); vllm needs a CUDA GPU and the
`gpu` extra. A user's backend registers from its own module (``import_modules``) with
``@BACKENDS.register("name")`` on a ``Backend`` subclass. The base class lives in base.py (re-exported
here): a backend of this package imports it from there, never from this registry that names it.

A backend serves every cell of one base model: it is made once per evaluation worker over the worker's
``LoadedModel`` (pipelines/evaluate/weights.py) and told which cell's adapter answers with ``use`` —
peft switches adapters on the shared copy (transformers), the fused weights are rebuilt with the
adapter's delta (fastcpu), or each request names its LoRA (vLLM)."""

from __future__ import annotations

from pipelines.config import GenerateConfig
from pipelines.evaluate.backends.base import Backend
from pipelines.evaluate.weights import LoadedModel
from pipelines.registry import Registry

__all__ = ["BACKENDS", "Backend", "make_backend"]  # Backend re-exported: callers read it from the package


BACKENDS: Registry[type[Backend]] = Registry("generation backend", {
    "transformers": "pipelines.evaluate.backends.transformers:TransformersBackend",
    "vllm": "pipelines.evaluate.backends.vllm:VllmBackend",
    "fastcpu": "pipelines.evaluate.backends.fastcpu:FastCpuBackend",
})


def make_backend(model: LoadedModel, gcfg: GenerateConfig) -> Backend:
    return BACKENDS.get(gcfg.backend)(model, gcfg, **gcfg.options)
