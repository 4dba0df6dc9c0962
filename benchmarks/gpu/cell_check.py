"""One cell's GPU work on a machine with only torch, transformers and peft (no Ray, no vLLM, no hub):
multi-adapter generation with transformers in bf16 (base + two LoRA adapters answered in one mixed
batch through peft's adapter_names, checked row for row against each adapter alone), the SORRY-Bench
judge template on a causal LM, and a LoRA training step. Weights are random at a real model's shape
(Llama-3.2-1B; speed does not depend on the values) with a byte-level tokenizer trained here, so nothing
is downloaded. The chat prompt is built by pipelines/registries/chat.py and the judge template read from
pipelines/evaluate/judges/llm.py, both loaded by path (the project's other dependencies are not needed).

    python benchmarks/gpu/cell_check.py                       # GPU, bf16, about 2-4 min on one H100
    python benchmarks/gpu/cell_check.py --device cpu --tiny   # the same code path in seconds (tests)

Prints one JSON line; `--out results.json` also writes it. Record GPU results in RESULTS.md."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["How do I bake bread at home?", "Give three tips for staying healthy.", "Explain photosynthesis.",
           "Write a haiku about rain.", "What is the capital of Denmark?", "Summarise the plot of Hamlet."]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def load_chat() -> Any:
    spec = importlib.util.spec_from_file_location("sd_chat", REPO / "pipelines" / "registries" / "chat.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def sorry_bench_template() -> str:
    tree = ast.parse((REPO / "pipelines" / "evaluate" / "judges" / "llm.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SORRY_BENCH_TEMPLATE":
            return ast.literal_eval(node.value)
    raise RuntimeError("SORRY_BENCH_TEMPLATE not found in pipelines/evaluate/judges/llm.py")


def tokenizer(vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = PROMPTS * 8 + [sorry_bench_template()] * 4
    bpe.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
        ("<|begin_of_text|>", bpe.token_to_id("<|begin_of_text|>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build(tiny: bool, device: str, dtype: torch.dtype, vocab: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    else:  # meta-llama/Llama-3.2-1B's shape, a vocabulary of what the local tokenizer holds
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                          rope_theta=500000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def add_adapters(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      init_lora_weights=False)  # random B: each adapter changes the answers
    peft_model = get_peft_model(model, lora, adapter_name="a1")
    peft_model.add_adapter("a2", lora)
    return peft_model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def multi_adapter_generation(model: Any, tok: Any, chat: Any, n: int, new_tokens: int, device: str) -> dict[str, Any]:
    prompts = (PROMPTS * (n // len(PROMPTS) + 1))[:n]
    names = [["__base__", "a1", "a2"][i % 3] for i in range(n)]
    enc = chat.batch_encoding(tok, prompts).to(device)
    ids = chat.prompt_token_ids(tok, prompts)
    one_bos = all(r.count(tok.bos_token_id) == 1 for r in ids)
    kw = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id}
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        mixed = model.generate(**enc, adapter_names=names, **kw)
    sync(device)
    seconds = time.perf_counter() - t0
    same = True
    with torch.inference_mode():
        for name in ("__base__", "a1", "a2"):
            rows = [i for i, x in enumerate(names) if x == name]
            sub = chat.batch_encoding(tok, [prompts[i] for i in rows]).to(device)
            alone = model.generate(**sub, adapter_names=[name] * len(rows), **kw)
            for j, i in enumerate(rows):
                a = alone[j, sub["input_ids"].shape[1]:].tolist()
                b = mixed[i, enc["input_ids"].shape[1]:].tolist()
                same &= a == b
        # The same prompt under the base model and an adapter: the adapter must change the answer.
        pair = chat.batch_encoding(tok, [prompts[0]] * 2).to(device)
        both = model.generate(**pair, adapter_names=["__base__", "a1"], **kw)[:, pair["input_ids"].shape[1]:]
        differ = both[0].tolist() != both[1].tolist()
    generated = int((mixed[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())
    return {"answers": n, "seconds": round(seconds, 3), "new_tokens_per_s": round(generated / seconds, 1),
            "mixed_batch_equals_each_adapter_alone": bool(same), "one_bos_per_prompt": one_bos,
            "adapters_change_answers": bool(differ)}


def sorry_bench(model: Any, tok: Any, chat: Any, n: int, device: str) -> dict[str, Any]:
    template = sorry_bench_template()
    texts = [template.format(question=p, answer="I cannot help with that.") for p in (PROMPTS * n)[:n]]
    enc = chat.batch_encoding(tok, texts).to(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), model.disable_adapter():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    sync(device)
    seconds = time.perf_counter() - t0
    decoded = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return {"items": n, "prompt_tokens": int(enc["attention_mask"].sum()), "seconds": round(seconds, 3),
            "items_per_s": round(n / seconds, 1), "outputs": len(decoded)}


def lora_step(model: Any, device: str, batch: int, seq: int, steps: int) -> dict[str, Any]:
    model.train()
    model.set_adapter("a1")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    losses, times = [], []
    for _ in range(steps + 1):  # the first step warms up (kernels, allocator)
        sync(device)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    step = sum(times[1:]) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"batch": batch, "seq": seq, "step_s": round(step, 4), "tokens_per_s": round(batch * seq / step),
            "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4), "finite": all(
                x == x and abs(x) < 1e4 for x in losses), "peak_gib": None if peak is None else round(peak, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a ~100k-parameter model, fp32, seconds on a CPU")
    ap.add_argument("--answers", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t_start = time.perf_counter()
    dtype = torch.float32 if args.tiny else torch.bfloat16
    tok = tokenizer(512 if args.tiny else 2048)
    chat = load_chat()
    model = add_adapters(build(args.tiny, args.device, dtype, len(tok))).eval()  # peft: adapter_names only in eval
    n = args.answers or (6 if args.tiny else 256)
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "dtype": str(dtype),
        "torch": torch.__version__, "tiny": args.tiny,
        "generation": multi_adapter_generation(model, tok, chat, n, 8 if args.tiny else 128, args.device),
        "sorry_bench": sorry_bench(model, tok, chat, 6 if args.tiny else 256, args.device),
        "lora": lora_step(model, args.device, 2 if args.tiny else 8, 64 if args.tiny else 1024, 2 if args.tiny else 10),
    }
    import peft
    import transformers

    res.update(transformers=transformers.__version__, peft=peft.__version__,
               total_s=round(time.perf_counter() - t_start, 1))
    line = json.dumps(res)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
