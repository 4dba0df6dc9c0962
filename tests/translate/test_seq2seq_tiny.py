"""The transformers seq2seq translator for real, on a tiny random-initialised M2M-100-shaped model with
a locally trained tokenizer (no hub). Gibberish out; the mechanics are what is checked."""

from __future__ import annotations

import pytest
from tiny_seq2seq import build_tiny_m2m100

from pipelines.translate.translators import make_translator

TEXTS = ["The cat sits on the table.", "Write a poem.", "El mar", "x",
         "The cat sits on the table. Write a short poem about the sea."]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_m2m100(tmp_path_factory.mktemp("tiny_m2m100"))


def test_codes_forced_bos_and_batching(tiny_model) -> None:
    tr = make_translator("m2m100", model=str(tiny_model), max_new_tokens=5, batch_size=2)
    out = tr.translate(TEXTS, "en", "es")
    assert len(out) == len(TEXTS) and all(isinstance(o, str) for o in out)
    tok = tr._tok
    en, es = tok.convert_tokens_to_ids("__en__"), tok.convert_tokens_to_ids("__es__")
    assert [c["n"] for c in tr.calls] == [2, 2, 1]  # sub-batches of batch_size
    for call in tr.calls:
        assert call["forced_bos"] == es
        assert set(call["first_input_ids"]) == {en}  # the source code opens every encoder input
        # decoder start (</s> for M2M-100), then the forced target-language code
        assert all(ids == [tok.eos_token_id, es] for ids in call["first_output_ids"])
    tr.calls.clear()
    tr.translate(["Write a poem."], "en", "pt")
    assert tr.calls[0]["forced_bos"] == tok.convert_tokens_to_ids("__pt__")
    assert "m2m100" in tr.cache_version() and str(tiny_model) in tr.cache_version()


def test_alignment_survives_length_sorting(tiny_model) -> None:
    """generate() replaced by an echo of the encoder input: each output must be its own input, so any
    reordering by the length-sorted sub-batches would show."""
    import torch

    tr = make_translator("m2m100", model=str(tiny_model), max_new_tokens=64, batch_size=2)
    tr._load()

    def echo(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: object) -> torch.Tensor:
        start = torch.full((input_ids.shape[0], 1), tr._tok.eos_token_id)
        forced = torch.full((input_ids.shape[0], 1), int(kw["forced_bos_token_id"]))
        return torch.cat([start, forced, input_ids[:, 1:]], dim=1)  # drop the source code token

    tr._model.generate = echo
    out = tr.translate(TEXTS, "en", "es")
    assert out == TEXTS


def test_missing_language_token_is_a_clear_error(tiny_model) -> None:
    tr = make_translator("m2m100", model=str(tiny_model))
    with pytest.raises(ValueError, match="no language token '__da__'"):
        tr.translate(["hello"], "en", "da")
