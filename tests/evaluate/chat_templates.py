"""Tiny tokenizers that behave like the paper's three template families where it matters here: where the
BOS comes from and whether the template has a thinking switch. Trained in a few milliseconds with
`tokenizers` (like registries/model_store.build_tiny), so no hub access is needed."""

from __future__ import annotations

from typing import Any

from pipelines.registries.models import LLAMA3_TEMPLATE, QWEN3_TEMPLATE  # the tiny registry models' own

# Gemma-3: the same BOS behaviour, its own turn markers ("model" for the assistant).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
SPECIALS = {
    "llama": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>"],
    "gemma": ["<bos>", "<start_of_turn>", "<end_of_turn>", "<eos>", "<pad>"],
    "qwen3": ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"],
}
CORPUS = ["How do I bake bread?", "Give three tips for staying healthy.", "Translate this sentence.",
          "user assistant model system", "Eat well, sleep well and move every day."] * 4


def tiny_tokenizer(style: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[style]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if style in ("llama", "gemma"):
        bos = specials[0]
        # What the real tokenizers do with add_special_tokens=True: a BOS before the text.
        bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[
            (bos, bpe.token_to_id(bos))])
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=specials[3],
                                      pad_token="<pad>")
        tok.chat_template = LLAMA3_TEMPLATE if style == "llama" else GEMMA3_TEMPLATE
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.chat_template = QWEN3_TEMPLATE
    tok.padding_side = "left"
    return tok
