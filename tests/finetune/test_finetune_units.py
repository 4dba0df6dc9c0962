"""Fine-tuning pieces without a training run: formatting, response-only labels, packing, DeepSpeed
configs, step plans, MFU, and the checks that refuse a cell before Ray Train starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from finetune_support import alpaca_rows, smoke_cfg, write_benign

from pipelines.cells import Cell
from pipelines.config import FinetuneConfig
from pipelines.errors import FinetuneError
from pipelines.finetune import check_data, check_trainable
from pipelines.finetune.data import (
    FORWARD_KWARGS,
    IGNORE,
    collate,
    format_example,
    micro_batch,
    pack_examples,
    plan_steps,
)
from pipelines.finetune.deepspeed_config import deepspeed_config
from pipelines.finetune.metrics import StepStats, mfu, peak_flops
from pipelines.registries.model_store import model_dir


@pytest.fixture(scope="module")
def tiny_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir("tiny-llama"))


def _prompt_len(tok, text: str) -> int:
    return len(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False))


def test_loss_only_on_the_response(tiny_tok) -> None:
    ex = format_example(tiny_tok, {"instruction": "Name a colour.", "input": "", "output": "Blue."}, 256)
    assert ex is not None
    n_prompt = _prompt_len(tiny_tok, "Name a colour.")
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt  # every prompt token (template included) is -100
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]  # response tokens are their own labels
    # The model's own template around the turn, and the response (plus end-of-turn) after it.
    assert tiny_tok.decode(ex["input_ids"][:n_prompt]).startswith("<|im_start|>user\nName a colour.")
    assert tiny_tok.decode(ex["input_ids"][n_prompt:], skip_special_tokens=True).strip() == "Blue."


def test_input_field_joins_the_instruction(tiny_tok) -> None:
    ex = format_example(tiny_tok, {"instruction": "Translate.", "input": "hola", "output": "hello"}, 256)
    assert ex is not None
    n_prompt = _prompt_len(tiny_tok, "Translate.\n\nhola")
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt and ex["labels"][n_prompt] != IGNORE


def test_prompt_that_fills_max_length_is_dropped(tiny_tok) -> None:
    assert format_example(tiny_tok, {"instruction": "word " * 200, "input": "", "output": "x"}, 32) is None


def test_collate_pads_right_and_masks() -> None:
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_packing_keeps_labels_and_restarts_positions() -> None:
    a = {"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}
    b = {"input_ids": [4, 5], "labels": [IGNORE, 5]}
    c = {"input_ids": [6, 7, 8, 9], "labels": [IGNORE, IGNORE, 8, 9]}
    packed = pack_examples([a, b, c], max_length=6)
    assert [p["input_ids"] for p in packed] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert packed[0]["labels"] == [IGNORE, 2, 3, IGNORE, 5]  # each example's own labels, prompt still -100
    assert packed[0]["position_ids"] == [0, 1, 2, 0, 1]
    batch = collate(packed, pad_id=0)
    assert "attention_mask" not in batch  # the position resets make the mask (block-diagonal)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]  # pad tail: its own segment
    assert batch["labels"].tolist()[1] == [IGNORE, IGNORE, 8, 9, IGNORE]


def test_packed_loss_equals_separate_examples(tiny_tok) -> None:
    """The real check of packing: on the tiny model, the summed token loss of a packed sequence equals the
    sum over its examples run one by one, so no example sees its neighbour and no loss crosses a seam."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir("tiny-llama"), dtype=torch.float32).eval()
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer number {i} is here."} for i in range(3)]
    examples = [format_example(tiny_tok, r, 96) for r in rows]
    packed = pack_examples(examples, max_length=256)
    assert len(packed) == 1 and len(packed[0]["input_ids"]) == sum(len(e["input_ids"]) for e in examples)

    def summed_loss(batch: dict, **kwargs) -> float:
        inputs = {k: v for k, v in batch.items() if k != "labels"} | FORWARD_KWARGS | kwargs
        logits = model(**inputs).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                       ignore_index=IGNORE, reduction="sum"))

    with torch.no_grad():
        alone = sum(summed_loss(collate([e], tiny_tok.pad_token_id)) for e in examples)
        together = summed_loss(collate(packed, tiny_tok.pad_token_id))
        # Without the position resets the same tokens attend across examples: a different loss.
        leaky = collate(packed, tiny_tok.pad_token_id)
        leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
        crossed = summed_loss(leaky)
        cached = summed_loss(collate(packed, tiny_tok.pad_token_id), use_cache=True)
    assert together == pytest.approx(alone, rel=1e-5)
    # And with a KV cache transformers ignores the position resets: why the loop passes FORWARD_KWARGS.
    assert abs(cached - alone) > 1e-3
    assert abs(crossed - alone) > 1e-3


def test_deepspeed_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    z2 = deepspeed_config(FinetuneConfig(batch_size=4, grad_accum=2), world_size=2)
    assert z2["train_batch_size"] == 16 and z2["zero_optimization"] == {"stage": 2}
    assert z2["gradient_accumulation_steps"] == 2
    assert z2["bf16"]["enabled"] is False  # fp32 on CPU
    # A reserved GPU that torch cannot see (a cluster advertising logical GPUs) trains in fp32 on CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert deepspeed_config(FinetuneConfig(use_gpu=True), world_size=1)["bf16"]["enabled"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    z3 = deepspeed_config(FinetuneConfig(zero_stage=3, use_gpu=True), world_size=1)
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert z3["bf16"]["enabled"] is True
    assert "auto" not in json.dumps(z3)  # HfDeepSpeedConfig builds the ZeRO-3 model from these values


def test_step_plan_and_resumable_batches() -> None:
    ft = FinetuneConfig(batch_size=4, grad_accum=2)
    plan = plan_steps(24, world=2, ft=ft, epochs=3)  # 12 per rank → 3 micro-batches an epoch, 9 in all
    assert (plan.per_rank, plan.micro_per_epoch, plan.optimizer_steps) == (12, 3, 4)
    shard = [{"input_ids": [i], "labels": [i]} for i in range(12)]
    first = [micro_batch(shard, plan, 4, seed=0, micro=m) for m in range(plan.micro_steps)]
    again = [micro_batch(shard, plan, 4, seed=0, micro=m) for m in range(plan.micro_steps)]
    assert first == again  # a resumed run takes exactly the batches the interrupted one would have
    epoch0 = sorted(e["input_ids"][0] for b in first[:3] for e in b)
    assert epoch0 == list(range(12))  # one epoch sees every example once
    assert first[:3] != first[3:6]  # and each epoch is shuffled anew
    with pytest.raises(FinetuneError, match="data.benign.n"):
        plan_steps(1, world=2, ft=ft, epochs=1)
    with pytest.raises(FinetuneError, match="finetune.grad_accum"):
        plan_steps(4, world=1, ft=FinetuneConfig(batch_size=4, grad_accum=8), epochs=1)


def test_mfu_only_for_known_gpus() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None and peak_flops("Some Future GPU") is None
    # 6·N·tokens / (seconds · peak · devices): 1B params, 49,152 tokens in 0.5 s on one H100 → 59.6 %
    assert mfu(10**9, 49_152, 0.5, 989e12, 1) == pytest.approx(0.5963, abs=1e-4)
    stats = StepStats(warmup=2)
    for s, t in [(9.0, 10), (5.0, 10), (1.0, 100), (3.0, 100), (2.0, 100)]:
        stats.add(s, t)
    assert stats.summary() == {"step_time_s": 2.0, "tokens_per_s": 50.0, "timed_steps": 3.0}  # warm-up left out


def test_model_without_chat_template_is_refused(tmp_path: Path) -> None:
    src = model_dir("tiny-llama")
    for f in src.iterdir():
        if f.is_file() and f.name != "chat_template.jinja":
            shutil.copy(f, tmp_path / f.name)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FinetuneError, match="no chat template.*add a chat_template"):
        check_trainable(tmp_path, "tiny-base")
    check_trainable(src, "tiny-llama")  # the same model with its template passes


def test_no_rows_after_qa_fails_before_ray_train(tmp_path: Path) -> None:
    """Every translated row flagged, and the policy drops that flag: finetune_cell stops before any
    TorchTrainer is built, naming the settings that fix it."""
    from pipelines.finetune import finetune_cell

    rows = alpaca_rows(6)
    ds = write_benign(tmp_path / "datasets" / "h", "en", rows, qa_policy={"drop_flags": ["empty", "truncated"]},
                      qa_flags=["truncated"] * 6)
    out = tmp_path / "checkpoints" / "x"
    with pytest.raises(FinetuneError, match=r"no rows after QA filtering \(6 before.*translate\.qa\.drop_flags"
                                            r".*data\.benign\.n"):
        finetune_cell(smoke_cfg(), Cell("tiny-llama", "en", 0, 1), model_dir("tiny-llama"), ds, out)
    assert not (tmp_path / "ray_train").exists() and not out.exists()  # Ray Train never started


def test_too_few_examples_for_the_workers(tmp_path: Path) -> None:
    ds = write_benign(tmp_path / "ds", "en", alpaca_rows(1))
    with pytest.raises(FinetuneError, match="cannot feed 2 workers.*finetune.num_workers"):
        check_data(FinetuneConfig(num_workers=2), Cell("tiny-llama", "en", 0, 1), model_dir("tiny-llama"), ds)
    with pytest.raises(FinetuneError, match="increase finetune.max_length"):
        long = [{"instruction": "word " * 200, "input": "", "output": "x"}] * 4
        check_data(FinetuneConfig(max_length=16), Cell("tiny-llama", "en", 0, 1), model_dir("tiny-llama"),
                   write_benign(tmp_path / "ds2", "en", long))
