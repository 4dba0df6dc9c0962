"""The instruction-model translator (vLLM, GPU only): its prompt, and a clear error without vLLM."""

from __future__ import annotations

import importlib.util

import pytest

from pipelines.errors import BackendMissingError
from pipelines.translate.translators import TRANSLATORS, make_translator


def test_prompt_names_languages_and_forbids_answering() -> None:
    tr = make_translator("llm", model="some/instruct-model")
    msgs = tr.messages(["Line one.\nLine two.", "Hi"], "en", "ga")
    assert len(msgs) == 2 and all(len(m) == 1 and m[0]["role"] == "user" for m in msgs)
    content = msgs[0][0]["content"]
    assert "from English to Irish" in content and content.endswith("Line one.\nLine two.")
    assert "Do not answer" in content and "only the Irish translation" in content
    assert TRANSLATORS.get("llm").prefers_gpu
    # The cache keys on the model and the prompt: a new prompt must not reuse old translations.
    other = make_translator("llm", model="some/instruct-model", prompt="Translate {src_name}->{tgt_name}: {text}")
    assert tr.cache_version() != other.cache_version()
    assert tr.clean('  "Hola"  ') == "Hola" and tr.clean("Hola") == "Hola"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_vllm_is_a_clear_error() -> None:
    tr = make_translator("llm", model="some/instruct-model")
    with pytest.raises(BackendMissingError, match=r"needs vLLM.*safedrift\[gpu\]"):
        tr.translate(["hello"], "en", "es")
    assert tr.translate([], "en", "es") == []  # nothing to do: vLLM is not even imported
