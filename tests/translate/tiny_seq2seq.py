"""A tiny random-initialised M2M-100-shaped translation model with a locally trained tokenizer that
knows the language-code tokens. Its output is gibberish; it exists to test the mechanics (codes,
batching, alignment, forced BOS) without the hub."""

from __future__ import annotations

from pathlib import Path

LANG_TOKENS = ["__en__", "__es__", "__pt__", "__zh__"]


def build_tiny_m2m100(out: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<s>", "<unk>", *LANG_TOKENS]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["The cat sits on the table.", "El gato está en la mesa.", "O gato está na mesa.",
              "Write a short poem about the sea.", "Escribe un poema corto sobre el mar."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # Every encoded text ends with </s>, like M2M-100's own tokenizer.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>", additional_special_tokens=LANG_TOKENS)
    torch.manual_seed(0)
    cfg = M2M100Config(vocab_size=tok.get_vocab_size(), d_model=32, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       max_position_embeddings=128, pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                       bos_token_id=fast.bos_token_id, decoder_start_token_id=fast.eos_token_id,
                       dropout=0.0, attention_dropout=0.0, init_std=0.5, scale_embedding=True)
    model = M2M100ForConditionalGeneration(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out
