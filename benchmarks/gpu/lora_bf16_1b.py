"""LoRA fine-tuning step time, tokens/s and MFU on a 1B Llama (Llama-3.2-1B's shape, random weights:
throughput does not depend on the values), bare PyTorch vs a DeepSpeed ZeRO-2 engine, same model and
batch, same process. GPU in bf16; `--tiny --device cpu` checks the script on a laptop in seconds.

    python benchmarks/gpu/lora_bf16_1b.py --steps 20 --batch 8 --seq 1024

MFU counts LoRA's real work: forward 2N FLOPs per token plus backward through the frozen base for the
activations (2N); weight gradients exist only for the adapters (negligible). The conventional 6N
number (full fine-tuning) is printed too, labelled.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def build(tiny: bool, device: str, dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    else:  # meta-llama/Llama-3.2-1B
        cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                          rope_theta=500000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    lora = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora), n_params, cfg.vocab_size


def timed_steps(step, n: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-deepspeed", action="store_true")
    args = ap.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, n_params, vocab = build(args.tiny, device, dtype)
    ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    tokens = args.batch * args.seq
    results: dict[str, object] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                  "params": n_params, "batch": args.batch, "seq": args.seq, "dtype": str(dtype),
                                  "torch": torch.__version__}

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5)

    def bare_step() -> None:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    bare = timed_steps(bare_step, args.steps, args.warmup, device)
    results["bare_step_s"] = round(bare, 4)

    if not args.skip_deepspeed:
        import deepspeed

        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": "29511"}.items():
            os.environ.setdefault(k, v)
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
        ds_cfg = {"train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True,
                  "bf16": {"enabled": device == "cuda"}, "gradient_clipping": 1.0, "steps_per_print": 10**9}
        opt2 = torch.optim.AdamW(params, lr=5e-5)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt2, config=ds_cfg)

        def ds_step() -> None:
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()

        ds = timed_steps(ds_step, args.steps, args.warmup, device)
        results["deepspeed_step_s"] = round(ds, 4)
        results["deepspeed_over_bare"] = round(ds / bare, 3)

    best = min(v for k, v in results.items() if k.endswith("_step_s"))  # type: ignore[type-var]
    results["tokens_per_s"] = round(tokens / best, 1)
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak:
            results["mfu_lora_4N"] = round(4 * n_params * tokens / best / peak, 4)
            results["mfu_conventional_6N"] = round(6 * n_params * tokens / best / peak, 4)
        results["max_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
