"""Issue #17 point 3: vLLM gets exactly the token ids the transformers path builds (no second BOS for
Llama-3/Gemma-3 templates), and Qwen3's thinking is off the same way in generation and fine-tuning."""

from __future__ import annotations

import pytest
from chat_templates import tiny_tokenizer

from pipelines.evaluate.backends.vllm import chat_prompts, token_prompts
from pipelines.finetune.data import IGNORE, format_example
from pipelines.registries.chat import batch_encoding, chat_template_kwargs, prompt_token_ids, unpadded

PROMPTS = ["How do I bake bread?", "Give three tips for staying healthy, please, in one short list."]


@pytest.mark.parametrize("style", ["llama", "gemma", "qwen3"])
def test_vllm_gets_the_transformers_ids(style: str) -> None:
    tok = tiny_tokenizer(style)
    ids = prompt_token_ids(tok, PROMPTS)
    # The transformers backend's padded batch holds the same ids (left padding stripped).
    assert unpadded(batch_encoding(tok, PROMPTS)) == ids
    assert [p["prompt_token_ids"] for p in token_prompts(tok, PROMPTS)] == ids
    if style != "qwen3":
        bos = tok.bos_token_id
        assert all(row[0] == bos and row.count(bos) == 1 for row in ids), "exactly one BOS per prompt"
        # What the old path did (text, then tokenised with special tokens, as LLM.generate(str) does):
        # two BOS. The test above would fail on it.
        again = tok(chat_prompts(tok, PROMPTS)[0])["input_ids"]
        assert again[:2] == [bos, bos]
    else:
        assert tok.bos_token_id is None or tok.bos_token_id not in ids[0]


def test_thinking_off_in_generation_and_training_alike() -> None:
    tok = tiny_tokenizer("qwen3")
    assert chat_template_kwargs(tok) == {"enable_thinking": False}
    assert chat_template_kwargs(tiny_tokenizer("llama")) == {}  # other templates get nothing unknown
    gen = prompt_token_ids(tok, [PROMPTS[0]])[0]
    assert tok.decode(gen).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ex = format_example(tok, {"instruction": PROMPTS[0], "input": "", "output": "Mix, knead, bake."}, 512)
    assert ex is not None
    n_ctx = sum(1 for x in ex["labels"] if x == IGNORE)
    # The training context is exactly the generation prompt: the empty think block is context there
    # too, never a target the model learns to emit (the base-vs-fine-tuned change would measure it).
    assert ex["input_ids"][:n_ctx] == gen
    target = tok.decode([x for x in ex["labels"] if x != IGNORE])
    assert "think>" not in target and target.startswith("Mix, knead, bake.")


def test_training_prompt_matches_generation_for_bos_templates() -> None:
    for style in ("llama", "gemma"):
        tok = tiny_tokenizer(style)
        ex = format_example(tok, {"instruction": PROMPTS[1], "input": "", "output": "Sleep."}, 512)
        n_ctx = sum(1 for x in ex["labels"] if x == IGNORE)
        assert ex["input_ids"][:n_ctx] == prompt_token_ids(tok, [PROMPTS[1]])[0]
