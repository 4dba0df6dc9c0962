"""transformers encoder-decoder translation models: NLLB-200, M2M-100, MADLAD-400."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pipelines.layout import model_override
from pipelines.registries.languages import LANGUAGES
from pipelines.translate.translators.base import Translator, all_pairs


class Seq2SeqTranslator(Translator):
    """A transformers encoder-decoder translation model, loaded once per instance (one per Ray actor).

    Language codes differ per family: NLLB uses FLORES-200 codes ("spa_Latn"), M2M-100 uses "__es__"
    tokens; both mark the source language in the encoder input (the tokenizer's ``src_lang``, or the code
    token prepended when the tokenizer has no such attribute) and force the target code as the first
    decoded token (``forced_bos_token_id``). MADLAD prefixes the source with "<2xx>" and forces nothing.
    Texts are translated in sub-batches of ``batch_size``, sorted by length so padding is small, and
    returned in input order."""

    family: ClassVar[str] = "nllb"
    default_model: ClassVar[str] = "facebook/nllb-200-distilled-600M"
    prefers_gpu = True

    def __init__(self, model: str | None = None, max_new_tokens: int = 256, device: str | None = None,
                 batch_size: int = 16, max_input_tokens: int = 512, num_gpus: float | None = None) -> None:
        self.model_id = model or model_override(self.family) or self.default_model
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self.num_gpus = num_gpus  # read by the translate stage when it sizes actors
        self._model: Any = None
        self._tok: Any = None
        self._native_src = False
        self.calls: list[dict[str, Any]] = []  # per generate call: sizes and codes (tests, benchmarks)

    @classmethod
    def pairs(cls) -> set[tuple[str, str]]:
        return all_pairs()

    def cache_version(self) -> str:
        import transformers

        return f"{self.version()}|{self.family}|{self.model_id}|transformers={transformers.__version__}|" \
               f"max_new_tokens={self.max_new_tokens}|greedy"

    def code(self, lang: str) -> str:
        """The language-code token for `lang` in this family's vocabulary."""
        return {"nllb": LANGUAGES.get(lang).nllb, "m2m100": f"__{lang}__", "madlad": f"<2{lang}>"}[self.family]

    def _src_lang_value(self, lang: str) -> str:
        # What the family's own tokenizer takes as src_lang: NLLB the FLORES code, M2M-100 the bare ISO code.
        return self.code(lang) if self.family == "nllb" else lang

    def _load(self) -> None:
        if self._model is None:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.model_id)
            self._native_src = hasattr(self._tok, "src_lang")
            self._model = AutoModelForSeq2SeqLM.from_pretrained(self.model_id).eval()
            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model.to(self.device)

    def _token_id(self, token: str) -> int:
        tid = self._tok.convert_tokens_to_ids(token)
        if tid is None or tid == self._tok.unk_token_id:
            raise ValueError(f"{self.model_id}: its vocabulary has no language token {token!r}")
        return int(tid)

    def encode(self, texts: Sequence[str], src: str, tgt: str) -> tuple[Any, dict[str, Any]]:
        """Encoder inputs and generate() arguments for one sub-batch."""
        self._load()
        tok = self._tok
        inputs = list(texts)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": 1, "do_sample": False}
        if self.family == "madlad":
            inputs = [f"{self.code(tgt)} {t}" for t in inputs]
        else:
            if self._native_src:
                tok.src_lang = self._src_lang_value(src)
            else:
                self._token_id(self.code(src))  # fail clearly when the code is missing
                inputs = [f"{self.code(src)} {t}" for t in inputs]
            gen_kwargs["forced_bos_token_id"] = self._token_id(self.code(tgt))
        enc = tok(inputs, return_tensors="pt", padding=True, truncation=True, max_length=self.max_input_tokens)
        return enc.to(self.device), gen_kwargs

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        import torch

        if not texts:
            return []
        self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idxs = order[start:start + self.batch_size]
            enc, gen_kwargs = self.encode([texts[i] for i in idxs], src, tgt)
            with torch.inference_mode():
                ids = self._model.generate(**enc, **gen_kwargs)
            self.calls.append({"n": len(idxs), "src": src, "tgt": tgt,
                               "first_input_ids": enc["input_ids"][:, 0].tolist(),
                               "forced_bos": gen_kwargs.get("forced_bos_token_id"),
                               "first_output_ids": ids[:, :2].tolist()})
            for i, s in zip(idxs, self._tok.batch_decode(ids, skip_special_tokens=True), strict=True):
                out[i] = s.strip()
        return out


class NllbTranslator(Seq2SeqTranslator):
    family = "nllb"
    default_model = "facebook/nllb-200-distilled-600M"


class M2M100Translator(Seq2SeqTranslator):
    family = "m2m100"
    default_model = "facebook/m2m100_418M"


class MadladTranslator(Seq2SeqTranslator):
    family = "madlad"
    default_model = "google/madlad400-3b-mt"
