"""The fastcpu generation backend against the transformers backend on the tiny test models: the same greedy
answers in fp32, adapters honoured, prompt order kept through length-sorted batches, rows that stop early
leave the batch without disturbing the others, and a clear error where the CPU lacks bf16."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipelines.config import GenerateConfig
from pipelines.errors import ConfigError
from pipelines.evaluate.backends import BACKENDS
from pipelines.evaluate.backends.fastcpu import BF16_FLAGS, FastCpuBackend, cpu_flags, resolve_dtype
from pipelines.evaluate.backends.transformers import TransformersBackend
from pipelines.evaluate.generate import generate_cell
from pipelines.evaluate.session import EvalSession
from pipelines.evaluate.weights import LoadedModel
from pipelines.registries.model_store import model_dir

# Prompts of very different lengths, so every batch is left-padded.
PROMPTS = ["Tell me about number 1.", "hi", "Explain " + "the long story " * 12 + "in short.",
           "¿Cuál es la capital de Portugal?", "写一句关于春天的诗。", "What is 17 times 23, and why?"]
HAS_BF16 = bool(cpu_flags() & BF16_FLAGS)


def _gcfg(**kw: object) -> GenerateConfig:
    return GenerateConfig(**{"max_new_tokens": 10, "batch_size": 3, "threads": 1, **kw})


def _make(cls: type, mdir: Path, adapter: Path | None, gcfg: GenerateConfig, **options: object) -> Any:
    """A backend over its own LoadedModel, answering with `adapter`."""
    backend = cls(LoadedModel(mdir, gcfg.threads), gcfg, **options)
    backend.use(adapter)
    return backend


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny test models with wider random weights: at their init (std 0.02) they answer every prompt
    with one token repeated, which would hide a swapped row or a shifted position; at std 0.2 every row's
    tokens differ."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for alias in ("tiny-llama", "tiny-qwen2"):
        model = AutoModelForCausalLM.from_pretrained(model_dir(alias))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.2, generator=gen)
        out[alias] = tmp_path_factory.mktemp(alias)
        model.save_pretrained(out[alias])
        AutoTokenizer.from_pretrained(model_dir(alias)).save_pretrained(out[alias])
    return out


@pytest.mark.parametrize("alias", ["tiny-llama", "tiny-qwen2"])
def test_fp32_greedy_answers_equal_the_transformers_backend(alias: str, varied: dict[str, Path]) -> None:
    # fp32 throughout and the same operations in the same order as transformers' Llama/Qwen2 modules, so
    # the greedy token choices are the same (qwen2 also covers the q/k/v biases).
    mdir = varied[alias]
    ref = _make(TransformersBackend, mdir, None, _gcfg()).answer(PROMPTS)
    got = _make(FastCpuBackend, mdir, None, _gcfg(), dtype="float32").answer(PROMPTS)
    assert got == ref
    assert len(set(got)) == len(PROMPTS)  # a non-trivial comparison: every prompt gets its own answer


def test_adapter_is_honoured(tmp_path: Path, varied: dict[str, Path]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    mdir = varied["tiny-llama"]
    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the adapter changes the answers (default B is zero).
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(mdir),
                          LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"],
                                     init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    adapter = tmp_path / "adapter"
    base = _make(FastCpuBackend, mdir, None, _gcfg(), dtype="float32").answer(PROMPTS)
    with_adapter = _make(FastCpuBackend, mdir, adapter, _gcfg(), dtype="float32").answer(PROMPTS)
    assert with_adapter != base
    assert with_adapter == _make(TransformersBackend, mdir, adapter, _gcfg()).answer(PROMPTS)


@pytest.mark.parametrize("backend", ["transformers", "fastcpu"])
def test_one_loaded_copy_serves_every_adapter(backend: str, tmp_path: Path, varied: dict[str, Path]) -> None:
    """An evaluation worker's session loads the base once and switches adapters on it: each answer equals
    the one a separately loaded, merged model gives (load_for_generation), in any order of switching, and
    detaching an adapter leaves the base model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipelines.evaluate.backends.transformers import generate_answers, load_for_generation

    mdir = varied["tiny-llama"]
    adapters = []
    for i, targets in enumerate((["q_proj", "v_proj", "down_proj"], ["k_proj", "o_proj", "gate_proj", "up_proj"])):
        torch.manual_seed(10 + i)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(mdir),
                              LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False))
        peft.save_pretrained(tmp_path / f"a{i}")
        adapters.append(tmp_path / f"a{i}")
    gcfg = _gcfg(backend=backend, options={"dtype": "float32"} if backend == "fastcpu" else {})
    expect = {}
    for a in (None, *adapters):
        model, tok = load_for_generation(mdir, a, 1)
        expect[a] = generate_answers(model, tok, PROMPTS, gcfg)
    assert len({tuple(v) for v in expect.values()}) == 3  # the adapters change the answers
    session = EvalSession(threads=1)
    b = session.backend(mdir, gcfg)
    for a in (None, adapters[0], None, adapters[1], adapters[0]):
        b.use(a)
        assert b.answer(PROMPTS) == expect[a], a
    assert session.loads() == {mdir.name: 1}
    for a in adapters:
        session.model(mdir).forget(a)
    b.use(None)
    assert b.answer(PROMPTS) == expect[None] and session.model(mdir).adapters == []


def test_generate_cell_keeps_prompt_order_through_length_batches(tmp_path: Path, varied: dict[str, Path]) -> None:
    frame = pl.DataFrame({"id": [f"p/{i}" for i in range(len(PROMPTS))], "lang": ["en"] * len(PROMPTS),
                          "prompt": PROMPTS})
    assert BACKENDS.get("fastcpu") is FastCpuBackend  # the registry entry the presets name
    gcfg = _gcfg(backend="fastcpu", options={"dtype": "float32"}, batch_size=2)
    batched = generate_cell(varied["tiny-llama"], None, frame, gcfg, tmp_path / "b2")
    assert len(list((tmp_path / "b2").glob("part-*.parquet"))) == 3
    assert batched["id"].to_list() == frame["id"].to_list()
    # Each answer is its own prompt's: the same as each prompt answered alone (no padding at all).
    alone = generate_cell(varied["tiny-llama"], None, frame, gcfg.model_copy(update={"batch_size": 1}),
                          tmp_path / "b1")
    assert batched["response"].to_list() == alone["response"].to_list()


def test_rows_that_stop_leave_the_batch_without_changing_the_others(varied: dict[str, Path]) -> None:
    import torch

    backend = _make(FastCpuBackend, varied["tiny-llama"], None, _gcfg(), dtype="float32")
    enc = backend.tok.apply_chat_template([[{"role": "user", "content": p}] for p in PROMPTS],
                                          add_generation_prompt=True, return_tensors="pt", padding=True,
                                          return_dict=True)
    free = backend.decoder.generate(enc["input_ids"], enc["attention_mask"], _gcfg(), eos=[])
    assert all(len(r) == 10 for r in free)
    # A stop token some row emits after its first step and some row never emits: the rows emitting it
    # stop and leave the batch mid-way; every row must read as its free run cut at its first stop token.
    stop = next(t for r in free for t in r[1:] if t not in r[:1] and any(t not in o for o in free)
                and all(o.index(t) >= 1 for o in free if t in o))
    cut = backend.decoder.generate(enc["input_ids"], enc["attention_mask"], _gcfg(), eos=[stop])
    expect = [r[:r.index(stop)] if stop in r else r for r in free]
    assert cut == expect
    assert 0 < min(map(len, cut)) < 10 and max(map(len, cut)) == 10  # some rows ran on after others left
    # Every row stopping at once ends the loop after the first step.
    first = sorted({r[0] for r in free})
    assert backend.decoder.generate(enc["input_ids"], enc["attention_mask"], _gcfg(), eos=first) == [[]] * len(PROMPTS)
    assert torch.get_num_threads() == 1  # generate.threads is honoured


def test_sampling_is_seeded_and_bounded(varied: dict[str, Path]) -> None:
    backend = _make(FastCpuBackend, varied["tiny-llama"], None, _gcfg(), dtype="float32")
    backend.gcfg = _gcfg(temperature=1.0, top_p=0.9, seed=3)
    a, b = backend.answer(PROMPTS), backend.answer(PROMPTS)
    assert a == b
    backend.gcfg = _gcfg(temperature=1.0, top_p=0.9, seed=4)
    assert backend.answer(PROMPTS) != a  # the seed matters
    enc = backend.tok.apply_chat_template([[{"role": "user", "content": p}] for p in PROMPTS],
                                          add_generation_prompt=True, return_tensors="pt", padding=True,
                                          return_dict=True)
    rows = backend.decoder.generate(enc["input_ids"], enc["attention_mask"], _gcfg(max_new_tokens=4,
                                    temperature=1.0, seed=3), eos=[])
    assert [len(r) for r in rows] == [4] * len(PROMPTS)  # max_new_tokens bounds every row


def test_bf16_needs_the_isa_and_says_how_to_fix_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = tmp_path / "cpuinfo"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f\n\nprocessor\t: 1\n")
    assert "avx2" in cpu_flags(plain) and not cpu_flags(plain) & BF16_FLAGS
    with pytest.raises(ConfigError, match="avx512_bf16 or amx_bf16.*dtype=auto"):
        _make(FastCpuBackend, model_dir("tiny-llama"), None, _gcfg(), dtype="bfloat16", cpuinfo=str(plain))
    with caplog.at_level(logging.INFO, logger="pipelines.evaluate.backends.fastcpu"):
        auto = _make(FastCpuBackend, model_dir("tiny-llama"), None, _gcfg(), dtype="auto", cpuinfo=str(plain))
    assert auto.dtype == "float32" and "float32" in caplog.text
    assert resolve_dtype("auto", frozenset({"amx_bf16"})) == "bfloat16"
    assert resolve_dtype("float32", frozenset({"amx_bf16"})) == "float32"
    with pytest.raises(ConfigError, match="not one of auto, bfloat16, float32"):
        resolve_dtype("fp16", frozenset())
    assert cpu_flags(tmp_path / "missing") == frozenset()  # no /proc (macOS): no bf16, fp32


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16 (avx512_bf16/amx_bf16)")
def test_bf16_logits_stay_close_to_fp32(varied: dict[str, Path]) -> None:
    # bf16 matmuls round each product's inputs, so greedy answers may differ from fp32 where two tokens
    # nearly tie; what must hold is that the logits stay close, since residual stream, norms, attention
    # and the final projection are fp32.
    import torch

    mdir = varied["tiny-llama"]
    fp32 = _make(FastCpuBackend, mdir, None, _gcfg(), dtype="float32")
    bf16 = _make(FastCpuBackend, mdir, None, _gcfg(), dtype="bfloat16")
    enc = fp32.tok.apply_chat_template([[{"role": "user", "content": p}] for p in PROMPTS],
                                       add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True)
    valid = enc["attention_mask"].bool()
    with torch.inference_mode():
        logits = [b.decoder.logits(b.decoder.prefill(enc["input_ids"], valid, valid.shape[1])[0]) for b in (fp32, bf16)]
    assert bf16.decoder.mm == torch.bfloat16 and bf16.decoder.layers[0]["qkv"].dtype == torch.bfloat16
    cos_sim = torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=-1)
    assert float(cos_sim.min()) > 0.99
    assert bf16.answer(PROMPTS) == bf16.answer(PROMPTS)  # deterministic


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not HAS_BF16, reason="this CPU has no native bf16"))])
def test_chunked_prefill_decodes_as_one_batch_does(dtype: str, varied: dict[str, Path]) -> None:
    """Prompts' passes in chunks of 2 rows (each chunk cut to its own longest prompt, written into one
    aligned cache) give the same tokens as one pass over the whole padded batch, and as each prompt alone."""
    b = _make(FastCpuBackend, varied["tiny-llama"], None, _gcfg(batch_size=6), dtype=dtype)
    enc = b.tok.apply_chat_template([[{"role": "user", "content": p}] for p in PROMPTS], add_generation_prompt=True,
                                    return_tensors="pt", padding=True, return_dict=True)
    whole = b.decoder.generate(enc["input_ids"], enc["attention_mask"], _gcfg(), eos=[])
    chunked = b.decoder.generate(enc["input_ids"], enc["attention_mask"], _gcfg(), eos=[], prefill_batch=2)
    assert chunked == whole
    if dtype == "float32":  # bf16 rounding may differ with the padding; fp32 must not
        alone = [_make(FastCpuBackend, varied["tiny-llama"], None, _gcfg(batch_size=1), dtype=dtype).answer([p])[0]
                 for p in PROMPTS]
        b.prefill_batch = 2
        assert b.answer(PROMPTS) == alone


def test_greedy_shortlist_picks_the_fp32_argmax(varied: dict[str, Path]) -> None:
    """The bf16 shortlist + fp32 rescoring of the vocabulary projection chooses the full fp32 argmax."""
    import torch

    b = _make(FastCpuBackend, varied["tiny-qwen2"], None, _gcfg(), dtype="float32")
    dec = b.decoder
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(64, dec.embed.shape[1], generator=gen)
    full = dec.logits(h).argmax(-1)
    dec.lm_head_lp = dec.lm_head.to(torch.bfloat16)  # the shortlist path, whatever this CPU has
    dec.mm = torch.bfloat16
    assert torch.equal(dec.greedy(h), full)
    dec.lm_head_lp = None
    assert torch.equal(dec.greedy(h), full)


def test_shared_prefix_is_computed_once_with_the_same_answers(varied: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts that open alike (as every chat prompt opens with its template's system turn): the common
    prefix's cache is computed once and copied to every row, and the answers equal the transformers
    backend's and the decoder's own without sharing."""
    import torch

    prompts = ["Please answer in one short sentence, and be kind: " + p for p in PROMPTS]
    b = _make(FastCpuBackend, varied["tiny-llama"], None, _gcfg(batch_size=6), dtype="float32")
    b.prefill_batch = 4
    enc = b.tok.apply_chat_template([[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True,
                                    return_tensors="pt", padding=True, return_dict=True)
    shared = b.decoder.shared_prefix(enc["input_ids"], enc["attention_mask"].bool())
    assert shared >= 10  # the template's opening plus the common words
    with_sharing = b.answer(prompts)
    assert with_sharing == _make(TransformersBackend, varied["tiny-llama"], None, _gcfg(batch_size=6)).answer(prompts)
    monkeypatch.setattr(type(b.decoder), "shared_prefix", staticmethod(lambda ids, valid: 0))
    assert b.answer(prompts) == with_sharing
    assert torch.get_num_threads() == 1


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16")
def test_bf16_kv_cache_stays_close_and_is_checked(varied: dict[str, Path], tmp_path: Path) -> None:
    """A bf16 key/value cache (half the bytes each decoding step reads): the cache is bf16, the prefill
    logits stay close to the fp32 cache's, answers are deterministic; a CPU without bf16 refuses it."""
    import torch

    fp = _make(FastCpuBackend, varied["tiny-llama"], None, _gcfg(), dtype="float32")
    kv = _make(FastCpuBackend, varied["tiny-llama"], None, _gcfg(), dtype="float32", kv_dtype="bfloat16")
    enc = fp.tok.apply_chat_template([[{"role": "user", "content": p}] for p in PROMPTS], add_generation_prompt=True,
                                     return_tensors="pt", padding=True, return_dict=True)
    valid = enc["attention_mask"].bool()
    outs = [b.decoder.prefill(enc["input_ids"], valid, valid.shape[1] + 2) for b in (fp, kv)]
    assert outs[1][1][0][0].dtype == torch.bfloat16 and outs[0][1][0][0].dtype == torch.float32
    lf, lk = (b.decoder.logits(o[0]) for b, o in zip((fp, kv), outs, strict=True))
    assert float(torch.nn.functional.cosine_similarity(lf, lk, dim=-1).min()) > 0.99
    assert kv.answer(PROMPTS) == kv.answer(PROMPTS)
    plain = tmp_path / "cpuinfo"
    plain.write_text("flags\t\t: fpu sse avx2\n")
    with pytest.raises(ConfigError, match="kv_dtype=bfloat16"):
        _make(FastCpuBackend, varied["tiny-llama"], None, _gcfg(), kv_dtype="bfloat16", cpuinfo=str(plain))
