"""vLLM generation (CUDA GPUs only; the `gpu` extra): one engine per base model per process, LoRA enabled,
every fine-tuned cell's adapter served by it through a per-request LoRARequest, the whole prompt list in
one engine call (vLLM schedules its own batches)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.config import GenerateConfig
from pipelines.errors import BackendMissingError
from pipelines.evaluate.backends.base import Backend
from pipelines.evaluate.weights import LoadedModel
from pipelines.registries.chat import chat_template_kwargs, prompt_token_ids, user_turn


class VllmBackend(Backend):
    """vLLM on a CUDA GPU, multi-LoRA: one engine per base model answers for all of its cells."""

    def __init__(self, model: LoadedModel, gcfg: GenerateConfig, max_loras: int = 4,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None) -> None:
        super().__init__(model, gcfg)
        self.engine_kwargs: dict[str, Any] = {"max_loras": max_loras, "gpu_memory_utilization": gpu_memory_utilization}
        if max_model_len is not None:
            self.engine_kwargs["max_model_len"] = max_model_len
        require_vllm()  # fail before any work on a machine without vLLM

    def answer(self, prompts: list[str]) -> list[str]:
        # The engine (one per base model in this worker) is never the LoadedModel's transformers copy:
        # that one is loaded only if capability or drift asks for it.
        return generate_vllm_many(self.model_dir, [(self.adapter, prompts)], self.gcfg, **self.engine_kwargs)[0]

    def close(self) -> None:
        # Engines are released between models: the worker moves on to the next base model's engine.
        _ENGINES.pop(str(Path(self.model_dir).resolve()), None)


def require_vllm() -> Any:
    """vLLM, imported lazily: it has no CPU wheel and pins its own torch (an exact torch version), so it lives in
    the `gpu` extra and only GPU images have it."""
    try:
        import vllm
    except ImportError as exc:
        raise BackendMissingError(
            "generate.backend=vllm needs vLLM, which is not installed here: install the GPU extra "
            "(`pip install -e '.[gpu]'`, on a CUDA machine) or set generate.backend=transformers"
        ) from exc
    return vllm


def token_prompts(tok: Any, prompts: list[str]) -> list[dict[str, list[int]]]:
    """One vllm TokensPrompt ({"prompt_token_ids": [...]}) per prompt: the ids the transformers path
    feeds its model (pipelines/registries/chat.py). Text would be tokenised again by vLLM with special
    tokens, a second BOS for Llama-3 and Gemma-3 templates."""
    return [{"prompt_token_ids": ids} for ids in prompt_token_ids(tok, prompts)]


def chat_prompts(tok: Any, prompts: list[str]) -> list[str]:
    """The same prompts rendered as text (what token_prompts' ids decode to), for reading; never what
    vLLM is given."""
    kw = chat_template_kwargs(tok)
    return [tok.apply_chat_template(user_turn(p), tokenize=False, add_generation_prompt=True, **kw)
            for p in prompts]


def sampling_kwargs(gcfg: GenerateConfig) -> dict[str, Any]:
    """vllm.SamplingParams arguments matching the transformers path (greedy when temperature is 0)."""
    kw: dict[str, Any] = {"max_tokens": gcfg.max_new_tokens, "temperature": gcfg.temperature, "seed": gcfg.seed}
    if gcfg.temperature > 0:
        kw["top_p"] = gcfg.top_p
    return kw


def lora_request_args(adapter_dirs: list[Path | None],
                      ids: dict[str, int] | None = None) -> list[tuple[str, int, str] | None]:
    """(name, int id, path) per prompt for vllm.lora.request.LoRARequest: one id per distinct adapter,
    starting at 1 (vLLM reserves 0), None for the base model. vLLM caches a loaded adapter by its int
    id, so the ids must stay distinct across calls to one engine (a worker answers cell after cell):
    `ids` is the engine's registry, kept between calls (default: this process's)."""
    ids = _LORA_IDS if ids is None else ids
    out: list[tuple[str, int, str] | None] = []
    for a in adapter_dirs:
        if a is None:
            out.append(None)
            continue
        key = str(Path(a).resolve())
        ids.setdefault(key, len(ids) + 1)
        out.append((f"adapter-{ids[key]}", ids[key], key))
    return out


_LORA_IDS: dict[str, int] = {}


def adapter_rank(adapter_dirs: list[Path | None]) -> int:
    ranks = [json.loads((Path(a) / "adapter_config.json").read_text()).get("r", 8) for a in adapter_dirs if a]
    return max([8, *ranks])


_ENGINES: dict[str, Any] = {}
# The ranks vLLM 0.33 accepts for max_lora_rank (vllm/config/lora.py MaxLoRARanks, recorded from the pinned
# wheel in tests/evaluate/vllm_api.json): any other value is refused when the engine starts.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_slot(rank: int) -> int:
    """The engine's max_lora_rank for adapters of `rank`: at least 64 (one engine serves every cell of a
    model, whatever rank a later one has), the smallest value vLLM accepts that holds it."""
    need = max(64, rank)
    fits = [r for r in VLLM_LORA_RANKS if r >= need]
    if not fits:
        raise ValueError(f"LoRA rank {rank} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]}): lower "
                         "finetune.lora.r")
    return fits[0]


def vllm_engine(model_dir: Path, max_lora_rank: int = 64, max_loras: int = 4, **engine_kwargs: Any) -> Any:
    """One engine per base model in this process, LoRA enabled, reused by every cell of that model."""
    vllm = require_vllm()
    key = str(Path(model_dir).resolve())
    if key not in _ENGINES:
        _ENGINES[key] = vllm.LLM(model=key, enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras,
                                 **engine_kwargs)
    return _ENGINES[key]


def generate_vllm_many(model_dir: Path, jobs: list[tuple[Path | None, list[str]]], gcfg: GenerateConfig,
                       **engine_kwargs: Any) -> list[list[str]]:
    """Answers for several (adapter or None, prompts) jobs of one base model in one engine call: the
    engine batches across adapters (multi-LoRA), which is why one engine serves every language."""
    vllm = require_vllm()
    from vllm.lora.request import LoRARequest

    adapters = [a for a, ps in jobs for _ in ps]
    llm = vllm_engine(model_dir, max_lora_rank=lora_rank_slot(adapter_rank(adapters)), **engine_kwargs)
    prompts = token_prompts(llm.get_tokenizer(), [p for _, ps in jobs for p in ps])
    loras = [LoRARequest(*a) if a else None for a in lora_request_args(adapters)]
    outs = llm.generate(prompts, vllm.SamplingParams(**sampling_kwargs(gcfg)),
                        lora_request=loras if any(loras) else None)
    flat = [o.outputs[0].text for o in outs]
    res, i = [], 0
    for _, ps in jobs:
        res.append(flat[i:i + len(ps)])
        i += len(ps)
    return res

