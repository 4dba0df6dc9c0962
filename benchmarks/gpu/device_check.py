"""What `safedrift plan` assumes about the GPU, measured on one GPU with only torch, transformers and peft
(the lent machine has no vLLM, Ray, DeepSpeed or hub access): random weights at the real shapes, about
six minutes of work on an H100, one JSON out. `pipelines/plan.py` reads that JSON (MEASURABLE) once it
is recorded as benchmarks/gpu/device_check.json.

    python3 benchmarks/gpu/device_check.py --out device_check.json     # on the GPU machine
    python3 benchmarks/gpu/device_check.py --tiny --out /tmp/d.json    # seconds on a CPU (the test)

Sections (each figure is a lower bound for what vLLM reaches: transformers' generate has no paging or
continuous batching):
- generation: greedy generation with three LoRA adapters mixed in one batch (peft's adapter_names) at
  Llama-3.2-1B's and Qwen3-4B's shapes, bf16;
- nllb_batch16 / nllb_batch64: an NLLB-200-distilled-600M-shaped seq2seq translating at batch 16 (the
  judge's back-translation batch) and 64 (the data sets'), output tokens a second;
- judge_prefill: a Mistral-7B-shaped judge's prefill of SORRY-Bench-sized prompts, with the NLLB model
  resident beside it (the judge replica's two models): tokens a second and the peak GPU memory;
- lora_step: one LoRA training step at the sweep's batch (configs/paper.yaml: 8 x 1,024 tokens) at
  Llama-3.2-1B's shape, tokens a second and peak memory."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

SHAPES = {  # (hidden, intermediate, layers, heads, kv heads, vocab) of the real models
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 128_256),
    "qwen3-4b": (2560, 9728, 36, 32, 8, 151_936),
    "mistral-7b": (4096, 14336, 32, 32, 8, 32_000),
}
TINY = (64, 128, 2, 4, 2, 512)
NLLB = {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096, "vocab": 256_206}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None


def causal_lm(shape: tuple[int, ...], device: str, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv, vocab = shape
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192)
    torch.manual_seed(0)
    with torch.device(device):  # random weights made where they run: a 7B copy in host memory takes minutes
        return LlamaForCausalLM(cfg).to(dtype=dtype).eval()


def seq2seq(tiny: bool, device: str, dtype: torch.dtype) -> Any:
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    n = {"d_model": 64, "layers": 2, "heads": 4, "ffn": 128, "vocab": 512} if tiny else NLLB
    cfg = M2M100Config(vocab_size=n["vocab"], d_model=n["d_model"], encoder_layers=n["layers"],
                       decoder_layers=n["layers"], encoder_attention_heads=n["heads"],
                       decoder_attention_heads=n["heads"], encoder_ffn_dim=n["ffn"], decoder_ffn_dim=n["ffn"],
                       max_position_embeddings=1024, decoder_start_token_id=2, pad_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        return M2M100ForConditionalGeneration(cfg).to(dtype=dtype).eval()


def generation(shape: tuple[int, ...], device: str, dtype: torch.dtype, batch: int, prompt: int,
               new: int) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    model = causal_lm(shape, device, dtype)
    lora = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      init_lora_weights=False)
    model = get_peft_model(model, lora, adapter_name="a1")
    for name in ("a2", "a3"):
        model.add_adapter(name, lora)
    model.eval()
    ids = torch.randint(3, shape[-1], (batch, prompt), device=device)
    names = [("__base__", "a1", "a2", "a3")[i % 4] for i in range(batch)]
    kw = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(input_ids=ids[:2], adapter_names=names[:2], max_new_tokens=2, pad_token_id=0)  # warm-up
        _, s = timed(device, lambda: model.generate(input_ids=ids, adapter_names=names, **kw))
    out = {"batch": batch, "prompt_tokens": prompt, "new_tokens": new, "adapters": 3, "seconds": round(s, 3),
           "tokens_per_s": round(batch * new / s, 1), "peak_gib": peak_gib(device)}
    return out


def translation(model: Any, device: str, batch: int, src: int, new: int) -> dict[str, Any]:
    ids = torch.randint(3, model.config.vocab_size, (batch, src), device=device)
    kw = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "num_beams": 1}
    with torch.inference_mode():
        model.generate(input_ids=ids[:2], max_new_tokens=2)  # warm-up
        _, s = timed(device, lambda: model.generate(input_ids=ids, **kw))
    return {"batch": batch, "source_tokens": src, "new_tokens": new, "seconds": round(s, 3),
            "tokens_per_s": round(batch * new / s, 1)}


def judge_prefill(shape: tuple[int, ...], nllb: Any, device: str, dtype: torch.dtype, batch: int,
                  prompt: int, rounds: int) -> dict[str, Any]:
    """The judge reads a prompt and writes one score token: prefill bound. NLLB stays resident (`nllb`)."""
    judge = causal_lm(shape, device, dtype)
    ids = torch.randint(3, shape[-1], (batch, prompt), device=device)
    with torch.inference_mode():
        judge(input_ids=ids[:2])  # warm-up
        _, s = timed(device, lambda: [judge(input_ids=ids, logits_to_keep=1) for _ in range(rounds)])
    out = {"batch": batch, "prompt_tokens": prompt, "rounds": rounds, "seconds": round(s, 3),
           "tokens_per_s": round(batch * prompt * rounds / s, 1), "peak_gib_with_nllb": peak_gib(device),
           "nllb_resident": nllb is not None}
    return out


def lora_step(shape: tuple[int, ...], device: str, dtype: torch.dtype, batch: int, seq: int,
              steps: int) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(causal_lm(shape, device, dtype),
                           LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    ids = torch.randint(3, shape[-1], (batch, seq), device=device)

    def step() -> float:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up
    losses, s = timed(device, lambda: [step() for _ in range(steps)])
    out = {"batch": batch, "seq": seq, "step_s": round(s / steps, 4), "tokens_per_s": round(batch * seq * steps / s),
           "finite": all(abs(x) < 1e4 for x in losses), "peak_gib": peak_gib(device)}
    return out


def free(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run(tiny: bool, device: str) -> dict[str, Any]:
    dtype = torch.float32 if tiny else torch.bfloat16
    big = {k: TINY for k in SHAPES} if tiny else SHAPES
    gen_new, gen_batch = (4, 4) if tiny else (128, 64)
    res: dict[str, Any] = {"generation": {}}
    for name in ("llama-3.2-1b", "qwen3-4b"):
        res["generation"][name] = generation(big[name], device, dtype, gen_batch, 8 if tiny else 256, gen_new)
        free(device)
    nllb = seq2seq(tiny, device, dtype)
    for batch in (16, 64):
        res[f"nllb_batch{batch}"] = translation(nllb, device, batch, 8 if tiny else 200, 4 if tiny else 200)
    free(device)
    res["judge_prefill"] = judge_prefill(big["mistral-7b"], nllb, device, dtype, 4 if tiny else 64,
                                         16 if tiny else 512, 2 if tiny else 8)
    del nllb
    free(device)
    res["lora_step"] = lora_step(big["llama-3.2-1b"], device, dtype, 2 if tiny else 8, 16 if tiny else 1024,
                                 1 if tiny else 10)
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes in fp32: seconds on a CPU")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args.tiny, args.device)
    import peft
    import transformers

    res.update(device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu", tiny=args.tiny,
               date=time.strftime("%Y-%m-%d"), torch=torch.__version__, transformers=transformers.__version__,
               peft=peft.__version__, total_s=round(time.perf_counter() - t0, 1))
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return res


if __name__ == "__main__":
    main()
