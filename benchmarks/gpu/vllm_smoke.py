"""vLLM smoke test on a GPU: one engine for a base model, answers with and without a LoRA adapter, and
the throughput in answers/s. Self-contained (only vllm + transformers' tokenizer, no safedrift import).

    python benchmarks/gpu/vllm_smoke.py --model /path/to/base --adapter /path/to/adapter [--n 32]

Prompts are harmless on purpose; the answers are printed truncated."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROMPTS = ["Give me three tips for learning a new language.", "¿Cuál es la capital de Portugal?",
           "Explain photosynthesis in one sentence.", "写一句关于春天的诗。",
           "What is 17 times 23?", "Nenne zwei Vorteile des Radfahrens."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="base model directory (HF format)")
    ap.add_argument("--adapter", default=None, help="peft LoRA adapter directory")
    ap.add_argument("--n", type=int, default=32, help="answers per run (prompts repeated)")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    rank = 8
    if args.adapter:
        rank = max(8, json.loads((Path(args.adapter) / "adapter_config.json").read_text()).get("r", 8))
    t0 = time.time()
    llm = LLM(model=args.model, enable_lora=bool(args.adapter), max_lora_rank=max(16, rank), max_loras=2,
              gpu_memory_utilization=0.5, max_model_len=2048)
    print(f"engine up in {time.time() - t0:.1f}s", flush=True)
    tok = llm.get_tokenizer()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.n)]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    runs = [("base", None)]
    if args.adapter:
        runs.append(("lora", LoRARequest("adapter-1", 1, str(Path(args.adapter).resolve()))))
    llm.generate(texts[:2], params)  # warm-up (CUDA graphs, kernels)
    for name, lora in runs:
        t0 = time.time()
        outs = llm.generate(texts, params, lora_request=lora)
        dt = time.time() - t0
        toks = sum(len(o.outputs[0].token_ids) for o in outs)
        print(f"{name}: {len(outs)} answers in {dt:.2f}s = {len(outs) / dt:.1f} answers/s, {toks / dt:.0f} tokens/s")
        for o in outs[:3]:
            print(f"  [{name}] {o.outputs[0].text[:80]!r}")
    # Mixed batch: base and adapter rows in one call, as the pipeline does for several cells.
    if args.adapter:
        mixed = [None if i % 2 else runs[1][1] for i in range(len(texts))]
        t0 = time.time()
        outs = llm.generate(texts, params, lora_request=mixed)
        dt = time.time() - t0
        print(f"mixed base+lora: {len(outs)} answers in {dt:.2f}s = {len(outs) / dt:.1f} answers/s")


if __name__ == "__main__":
    main()
