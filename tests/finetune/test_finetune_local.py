"""The training loop for real, in Ray Train's local mode (a TorchTrainer with num_workers=0 runs the
workers' loop in this process; DeepSpeed on a one-rank gloo group): reproducibility, resume from a
checkpoint, ZeRO-3 models built under deepspeed.zero.Init, full fine-tuning, packing, the exported
directories and the per-step MLflow metrics. No worker start-up, so each run takes seconds; the
multi-worker path (and a worker killed from outside) is test_finetune_fault.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from finetune_support import alpaca_rows, run_local, safetensors_dict, write_benign

from pipelines.config import FinetuneConfig, LoraConfig
from pipelines.finetune import checkpoints as ck
from pipelines.registries.model_store import model_dir

# 16 examples, batch 4, grad_accum 2, 2 epochs: 4 optimizer steps; warm-up over the first 2.
BASE = FinetuneConfig(method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.1), lr=1e-3, warmup_ratio=0.5,
                      batch_size=4, grad_accum=2, max_length=96, num_workers=1, checkpoint_every_steps=2)
STEPS = 4


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return write_benign(tmp_path_factory.mktemp("datasets") / "h", "en", alpaca_rows(16))


def _ckpt(result) -> Path:
    assert result.error is None and result.checkpoint is not None
    return Path(result.checkpoint.path)


def _weights(result, method: str) -> dict[str, torch.Tensor]:
    d = _ckpt(result)
    if method == "lora":
        return safetensors_dict(d / ck.ADAPTER / "adapter_model.safetensors")
    return safetensors_dict(d / ck.EXPORT / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _generates(export: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    enc = tok.apply_chat_template([{"role": "user", "content": "Hello?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 1


def test_same_seed_same_weights_and_per_step_metrics(ds: Path, tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("ft", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id

    first = run_local(BASE, "tiny-llama", ds, tmp_path / "a", seed=0, epochs=2, tracking_uri=uri, mlflow_run_id=run_id)
    again = run_local(BASE, "tiny-llama", ds, tmp_path / "b", seed=0, epochs=2)
    other = run_local(BASE, "tiny-llama", ds, tmp_path / "c", seed=1, epochs=2)

    assert first.metrics["optimizer_steps"] == STEPS and first.metrics["micro_steps"] == 2 * STEPS
    # Seeds fix LoRA's initialisation, dropout and the batch order: same seed, bit-identical adapter.
    assert _same(_weights(first, "lora"), _weights(again, "lora"))
    assert ck.read_state(_ckpt(first))["losses"] == ck.read_state(_ckpt(again))["losses"]
    assert first.metrics["train_loss"] == again.metrics["train_loss"]
    assert not _same(_weights(first, "lora"), _weights(other, "lora"))

    history = {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
               for k in ("train/loss", "train/lr", "train/tokens_per_s", "train/mfu")}
    assert history["train/loss"] == pytest.approx(ck.read_state(_ckpt(first))["losses"])
    assert history["train/lr"] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])  # linear warm-up, then decay
    assert len(history["train/tokens_per_s"]) == STEPS and min(history["train/tokens_per_s"]) > 0
    assert history["train/mfu"] == []  # a GPU measure only
    assert first.metrics["tokens_per_s"] > 0 and first.metrics["step_time_s"] > 0


@pytest.mark.parametrize("variant", [
    {"method": "lora", "zero_stage": 2, "packing": False},
    {"method": "full", "zero_stage": 3, "packing": True, "lr": 1e-4},
], ids=["lora-zero2-padded", "full-zero3-packed"])
def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(ds: Path, tmp_path: Path, variant: dict) -> None:
    ft = BASE.model_copy(update=variant)
    method = variant["method"]
    whole = run_local(ft, "tiny-llama", ds, tmp_path / "whole", epochs=2)
    # A run that ends right after its step-2 checkpoint (as a crash would), then one that resumes from it.
    cut = run_local(ft, "tiny-llama", ds, tmp_path / "cut", epochs=2,
                    fault_injection={"after_step": 2, "action": "stop"})
    mid = _ckpt(cut)
    assert ck.read_state(mid)["step"] == 2 and not ck.read_state(mid)["final"]
    assert (mid / ck.DS_DIR / ck.DS_TAG).is_dir() and (mid / ck.RNG_DIR / "rank_0.pt").exists()
    assert (mid / ck.ADAPTER / "adapter_model.safetensors").exists() == (method == "lora")
    resumed = run_local(ft, "tiny-llama", ds, tmp_path / "resumed", epochs=2, resume_from=str(mid))

    assert whole.metrics["resumed_from_step"] == -1 and resumed.metrics["resumed_from_step"] == 2
    assert resumed.metrics["optimizer_steps"] == whole.metrics["optimizer_steps"] == STEPS
    # Weights, optimizer, scheduler, step and RNG all came back: the same numbers to the last bit.
    assert ck.read_state(_ckpt(resumed))["losses"] == ck.read_state(_ckpt(whole))["losses"]
    assert _same(_weights(resumed, method), _weights(whole, method))
    if variant["zero_stage"] == 3:
        assert whole.metrics["zero3_init"] == 1.0  # the model was built partitioned (deepspeed.zero.Init)
    if method == "full":
        _generates(_ckpt(whole) / ck.EXPORT)
        base = safetensors_dict(model_dir("tiny-llama") / "model.safetensors")
        changed = _weights(whole, "full")
        assert any(not torch.equal(base[k], changed[k]) for k in base)  # every weight trainable, and trained


def test_lora_zero3_adapter_and_merged_export_load(ds: Path, tmp_path: Path) -> None:
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_local(BASE.model_copy(update={"zero_stage": 3}), "tiny-llama", ds, tmp_path / "z3", epochs=2)
    assert result.metrics["zero3_init"] == 1.0 and result.metrics["optimizer_steps"] == STEPS
    d = _ckpt(result)
    adapter, export = d / ck.ADAPTER, d / ck.EXPORT
    assert PeftConfig.from_pretrained(adapter).r == 4
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in export.iterdir()}
    assert AutoTokenizer.from_pretrained(export).chat_template  # generation can use the chat template
    _generates(export)
    # The merged export computes what base + adapter computes, and the adapter is not a no-op.
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    base = AutoModelForCausalLM.from_pretrained(model_dir("tiny-llama"))
    with torch.no_grad():
        plain = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, adapter)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(export)(ids).logits
    assert torch.allclose(peft_logits, merged, atol=1e-5)
    assert not torch.allclose(plain, merged, atol=1e-4)
