"""What a cell answers with, and the one loaded copy of a base model that every cell of that model shares.

An evaluation worker evaluates all cells of one base model (pipelines/sweep/evaluation.py). It loads the
base once (``LoadedModel``) and attaches each fine-tuned cell's LoRA adapter to it by name, switching
which one is active instead of loading a model per cell; the base model's own answers and hidden states
come from the same copy with the adapters disabled. On a GPU the copy is bf16 on the device (capability
and drift then run there); on CPU it is fp32."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Weights:
    """What a cell answers with: the base model, base + LoRA adapter, or a full fine-tune's export."""

    base: Path
    model: Path  # the directory to load (the base, or a full fine-tune's export)
    adapter: Path | None = None

    @property
    def is_base(self) -> bool:
        return self.model == self.base and self.adapter is None


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"  # decoder-only batches must be left-padded for generation
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def device_and_dtype() -> tuple[str, Any]:
    """("cuda", bf16) where torch sees a GPU, else ("cpu", fp32): bf16 halves a GPU copy's memory and is
    what the study's models were trained in; on CPU fp32 keeps the transformers path exact."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


class LoadedModel:
    """One model directory, loaded at most once: its tokenizer, and on first use its transformers weights,
    with every adapter ``activate`` was given attached by name (peft, unmerged). ``loads`` counts the
    weight loads, so a test can assert that one copy served every adapter."""

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        self.dir = Path(model_dir)
        self.threads = threads
        self.loads = 0
        self.active: Path | None = None
        self._tok: Any = None
        self._hf: Any = None
        self._names: dict[str, str] = {}  # resolved adapter path -> peft adapter name

    @property
    def tok(self) -> Any:
        if self._tok is None:
            self._tok = load_tokenizer(self.dir)
        return self._tok

    @property
    def hf(self) -> Any:
        """The transformers model (a PeftModel once an adapter is attached), loaded on first use."""
        if self._hf is None:
            import torch
            from transformers import AutoModelForCausalLM

            torch.set_num_threads(self.threads or os.cpu_count() or 1)
            device, dtype = device_and_dtype()
            self._hf = AutoModelForCausalLM.from_pretrained(self.dir, dtype=dtype).to(device).eval()
            self.loads += 1
            log.info("loaded %s on %s (%s)", self.dir.name, device, dtype)
        return self._hf

    @property
    def adapters(self) -> list[str]:
        return list(self._names)

    def activate(self, adapter: Path | None) -> Any:
        """The model answering as the base (None) or as base + `adapter` (attached on first use)."""
        model = self.hf
        if adapter is None:
            if self._names:
                model.base_model.disable_adapter_layers()
        else:
            key = str(Path(adapter).resolve())
            if key not in self._names:
                name = f"cell{len(self._names)}"
                if not self._names:
                    from peft import PeftModel

                    self._hf = model = PeftModel.from_pretrained(model, key, adapter_name=name).eval()
                else:
                    model.load_adapter(key, adapter_name=name)
                self._names[key] = name
            model.set_adapter(self._names[key])
            model.base_model.enable_adapter_layers()
        self.active = adapter
        return model

    def forget(self, adapter: Path | None) -> None:
        """Detaches `adapter` once its cell is evaluated, so a worker serving dozens of cells holds one
        adapter at a time; the last one detached leaves the plain model (peft's unload, no merge)."""
        if adapter is None:
            return
        key = str(Path(adapter).resolve())
        name = self._names.pop(key, None)
        if name is None or self._hf is None:
            return
        was_active = self.active is not None and str(Path(self.active).resolve()) == key
        if self._names:
            self._hf.delete_adapter(name)
            if was_active:
                self.activate(None)
        else:
            self._hf = self._hf.unload()
            self.active = None

    def base_model(self) -> Any:
        """The underlying transformers model (its layers carry the LoRA modules when adapters are attached)."""
        model = self.hf
        return model.get_base_model() if self._names else model

    def release(self) -> None:
        """Drops the weights (an evaluation worker moves on to another model)."""
        self._hf = None
        self._names.clear()
        self.active = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
