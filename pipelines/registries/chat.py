"""The chat prompt every stage builds the same way: the model's own chat template around the user's turn,
with the template options its family needs, as token ids.

Two validity rules live here so that fine-tuning, the transformers backend and the vLLM backend cannot
drift apart (issue #17):
- Qwen3-style templates take ``enable_thinking``; left on, generation would think while the fine-tuning
  targets carry an empty ``<think></think>``, so the base-vs-fine-tuned change would measure thinking
  on/off. Every caller passes ``enable_thinking=False`` wherever the template reads it.
- Templates that write ``{{ bos_token }}`` themselves (Llama-3, Gemma-3) get a second BOS when their text
  is tokenised again with special tokens (as ``LLM.generate(str)`` does). Prompts therefore travel as
  the ids ``apply_chat_template(tokenize=True)`` returns, which adds no special token of its own."""

from __future__ import annotations

from typing import Any

# Families whose chat template has a thinking switch (the registry's ModelSpec.thinking says it per model).
THINKING_FAMILIES = frozenset({"qwen3"})


def chat_template_kwargs(tok: Any, family: str | None = None) -> dict[str, Any]:
    """Extra apply_chat_template arguments for this tokenizer's template: thinking off where the family
    has a thinking mode or the template reads ``enable_thinking`` (a template that does not read it
    ignores it, but passing nothing unknown keeps other templates' output byte-identical)."""
    template = getattr(tok, "chat_template", None) or ""
    if (family in THINKING_FAMILIES) or "enable_thinking" in template:
        return {"enable_thinking": False}
    return {}


def user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def prompt_token_ids(tok: Any, prompts: list[str], family: str | None = None) -> list[list[int]]:
    """Token ids of each prompt as the user's single turn plus the generation prompt, exactly what the
    model sees: no special token beyond what the template writes."""
    kw = chat_template_kwargs(tok, family)
    return [list(tok.apply_chat_template(user_turn(p), add_generation_prompt=True, tokenize=True,
                                         return_dict=False, **kw)) for p in prompts]


def batch_encoding(tok: Any, prompts: list[str], family: str | None = None) -> Any:
    """The transformers backend's left-padded batch (input_ids + attention_mask tensors) of the same ids
    prompt_token_ids gives; for TransformersBackend.generate_answers to call instead of its own
    apply_chat_template, so both backends share the template options."""
    return tok.apply_chat_template([user_turn(p) for p in prompts], add_generation_prompt=True,
                                   return_tensors="pt", padding=True, return_dict=True,
                                   **chat_template_kwargs(tok, family))


def unpadded(enc: Any) -> list[list[int]]:
    """The real token ids of each row of a padded batch (attention_mask 1), in order."""
    return [[int(t) for t, m in zip(ids, mask, strict=True) if int(m)]
            for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
