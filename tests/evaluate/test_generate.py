from __future__ import annotations

import polars as pl

from pipelines.config import GenerateConfig
from pipelines.evaluate.backends.transformers import length_batches
from pipelines.evaluate.generate import generate_cell
from pipelines.registries.model_store import model_dir


def _prompts(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"p/{i}" for i in range(n)], "lang": ["en"] * n,
                         "prompt": [f"Tell me about number {i}." for i in range(n)]})


def test_generation_resumes_where_it_stopped(tmp_path) -> None:
    gcfg = GenerateConfig(max_new_tokens=4, batch_size=3, threads=1)
    out = tmp_path / "gen"
    first = generate_cell(model_dir("tiny-llama"), None, _prompts(3), gcfg, out)
    assert first.height == 3 and len(list(out.glob("part-*.parquet"))) == 1
    mtime = next(out.glob("part-*.parquet")).stat().st_mtime_ns
    # Three more prompts: only they are generated; the first part is not rewritten.
    full = generate_cell(model_dir("tiny-llama"), None, _prompts(6), gcfg, out)
    assert full["id"].to_list() == [f"p/{i}" for i in range(6)]
    assert full["response"].null_count() == 0
    assert len(list(out.glob("part-*.parquet"))) == 2
    assert next(iter(sorted(out.glob("part-*.parquet")))).stat().st_mtime_ns == mtime
    assert full.head(3)["response"].to_list() == first["response"].to_list()  # greedy: deterministic


def test_length_batches_group_similar_lengths_in_even_batches() -> None:
    lengths = [5, 50, 6, 49, 7, 48, 1]
    batches = length_batches(lengths, 3)
    # ceil(7/3) = 3 batches of near-equal size (3, 2, 2), not 3, 3, 1; every prompt exactly once.
    assert [len(b) for b in batches] == [3, 2, 2]
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [sorted(lengths[i] for i in b) for b in batches] == [[48, 49, 50], [6, 7], [1, 5]]
    assert length_batches([], 4) == [] and length_batches([3, 3], 8) == [[0, 1]]


def test_generation_batches_by_length_and_keeps_prompt_order(tmp_path) -> None:
    words = [2, 30, 3, 28, 1]
    prompts = pl.DataFrame({"id": [f"p/{i}" for i in range(5)], "lang": ["en"] * 5,
                            "prompt": [" ".join(["word"] * w) + f" {i}?" for i, w in enumerate(words)]})
    sorted_ = generate_cell(model_dir("tiny-llama"), None, prompts,
                            GenerateConfig(max_new_tokens=4, batch_size=2, threads=1), tmp_path / "sorted")
    parts = [sorted(pl.read_parquet(p)["id"].to_list()) for p in sorted(tmp_path.glob("sorted/part-*.parquet"))]
    assert parts == [["p/1", "p/3"], ["p/0", "p/2"], ["p/4"]]  # the two long prompts share a batch
    assert sorted_["id"].to_list() == prompts["id"].to_list()
    # Each answer belongs to its own prompt: the same greedy answers as one prompt at a time (no padding).
    single = generate_cell(model_dir("tiny-llama"), None, prompts,
                           GenerateConfig(max_new_tokens=4, batch_size=1, threads=1), tmp_path / "single")
    assert sorted_["response"].to_list() == single["response"].to_list()
    assert sorted_["prompt"].to_list() == prompts["prompt"].to_list()


def test_sampling_is_seeded_and_max_new_tokens_bounds_answers(tmp_path) -> None:
    from pipelines.evaluate.backends.transformers import generate_answers, load_for_generation

    model, tok = load_for_generation(model_dir("tiny-llama"), None, threads=1)
    prompts = ["Tell me about number 1.", "Tell me about number 2."]
    gcfg = GenerateConfig(max_new_tokens=5, temperature=1.0, top_p=0.9, seed=7)
    a = generate_answers(model, tok, prompts, gcfg)
    b = generate_answers(model, tok, prompts, gcfg)
    assert a == b  # same seed, same sample
    # max_new_tokens bounds the answer: greedy answers with 2 new tokens are prefixes of those with 5.
    short = generate_answers(model, tok, prompts, GenerateConfig(max_new_tokens=2))
    long = generate_answers(model, tok, prompts, GenerateConfig(max_new_tokens=5))
    assert all(lg.startswith(sh) for sh, lg in zip(short, long, strict=True))
    assert sum(map(len, short)) <= sum(map(len, long))


def test_vllm_missing_gives_a_clear_error(tmp_path, monkeypatch) -> None:
    import sys

    import pytest

    from pipelines.errors import BackendMissingError
    from pipelines.evaluate.backends.vllm import require_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError, as on CPU
    with pytest.raises(BackendMissingError, match="generate.backend=transformers"):
        require_vllm()
    gcfg = GenerateConfig(backend="vllm", max_new_tokens=4)
    with pytest.raises(BackendMissingError):
        generate_cell(model_dir("tiny-llama"), None, _prompts(2), gcfg, tmp_path / "gen")
    assert not list((tmp_path / "gen").glob("part-*.parquet"))  # nothing half-written


def test_vllm_request_building(tmp_path) -> None:
    from transformers import AutoTokenizer

    from pipelines.evaluate.backends.vllm import chat_prompts, lora_request_args, sampling_kwargs

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ids: dict[str, int] = {}
    args = lora_request_args([None, a, b, a, None], ids)
    # One integer id per distinct adapter, from 1 (vLLM reserves 0); the base model has no request.
    assert args[0] is None and args[4] is None
    assert args[1] == ("adapter-1", 1, str(a.resolve())) and args[3] == args[1]
    assert args[2] == ("adapter-2", 2, str(b.resolve()))
    # The next cell's call to the same engine: a new adapter gets a new id (vLLM caches by id, so a
    # reused id would answer with the previous cell's adapter), a known one keeps its own.
    assert lora_request_args([c, a], ids) == [("adapter-3", 3, str(c.resolve())), args[1]]
    assert sampling_kwargs(GenerateConfig(max_new_tokens=9)) == {"max_tokens": 9, "temperature": 0.0, "seed": 0}
    assert sampling_kwargs(GenerateConfig(temperature=0.7, top_p=0.8))["top_p"] == 0.8
    tok = AutoTokenizer.from_pretrained(model_dir("tiny-llama"))
    texts = chat_prompts(tok, ["hello there"])
    # Exactly what the transformers path tokenises: the chat template with the generation prompt.
    assert texts[0].endswith("<|im_start|>assistant\n") and "hello there" in texts[0]
