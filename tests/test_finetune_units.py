from __future__ import annotations

import pytest

from pipelines.config import FinetuneConfig
from pipelines.finetune import (
    IGNORE,
    FinetuneError,
    check_trainable,
    collate,
    deepspeed_config,
    format_example,
)
from pipelines.model_store import model_dir


@pytest.fixture(scope="module")
def tiny_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir("tiny-llama"))


def test_loss_only_on_the_response(tiny_tok) -> None:
    ex = format_example(tiny_tok, {"instruction": "Name a colour.", "input": "", "output": "Blue."}, 256)
    assert ex is not None
    n_prompt = len(tiny_tok.apply_chat_template([{"role": "user", "content": "Name a colour."}],
                                                add_generation_prompt=True, tokenize=True, return_dict=False))
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert all(x != IGNORE for x in ex["labels"][n_prompt:])
    assert tiny_tok.decode(ex["input_ids"][n_prompt:], skip_special_tokens=True).strip() == "Blue."


def test_prompt_that_fills_max_length_is_dropped(tiny_tok) -> None:
    assert format_example(tiny_tok, {"instruction": "word " * 200, "input": "", "output": "x"}, 32) is None


def test_collate_pads_right_and_masks(tiny_tok) -> None:
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_deepspeed_configs() -> None:
    z2 = deepspeed_config(FinetuneConfig(batch_size=4, grad_accum=2), world_size=2)
    assert z2["train_batch_size"] == 16 and z2["zero_optimization"] == {"stage": 2}
    assert z2["bf16"]["enabled"] is False  # fp32 on CPU
    z3 = deepspeed_config(FinetuneConfig(zero_stage=3, use_gpu=True), world_size=1)
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert z3["bf16"]["enabled"] is True


def test_model_without_chat_template_is_refused(tmp_path) -> None:
    import shutil

    src = model_dir("tiny-llama")
    for f in src.iterdir():
        if f.name not in {"chat_template.jinja"}:
            shutil.copy(f, tmp_path / f.name)
    import json

    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FinetuneError, match="no chat template"):
        check_trainable(tmp_path, "tiny-base")
