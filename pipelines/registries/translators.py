"""Translator registry and the route table. Every translator turns a batch of texts from one language
into another; a route is a chain of hops (en→es→pt through Apertium), planned per language pair from
the translators the config prefers. "reference" is special: it reads a human translation that the data
set carries, so it is a route of its own rather than a hop."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pipelines.registry import Registry

REFERENCE = "reference"


class NoRouteError(ValueError):
    pass


class Translator(ABC):
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def pairs(cls) -> set[tuple[str, str]]:
        """Direct (source, target) pairs this translator can do on this machine."""

    @classmethod
    def version(cls) -> str:
        return "1"

    @abstractmethod
    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]: ...


TRANSLATORS: Registry[type[Translator]] = Registry("translator")


@dataclass(frozen=True)
class Hop:
    translator: str
    src: str
    tgt: str


# ---- Apertium ------------------------------------------------------------------------------------

_APERTIUM_MODES = {("en", "es"): "eng-spa", ("es", "en"): "spa-eng", ("es", "pt"): "es-pt", ("pt", "es"): "pt-es"}
_SEP = "\n\n[[[{}]]]\n\n"
_SEP_RE = re.compile(r"\s*\[\[\[(\d+)\]\]\]\s*")


@functools.cache
def _apertium_modes() -> frozenset[str]:
    if shutil.which("apertium") is None:
        return frozenset()
    out = subprocess.run(["apertium", "-l"], capture_output=True, text=True, check=False).stdout
    return frozenset(line.strip() for line in out.splitlines() if line.strip())


@TRANSLATORS.register("apertium")
class ApertiumTranslator(Translator):
    """Debian's rule-based Apertium (offline). A batch goes through one process call, texts separated
    by numbered marker paragraphs that Apertium passes through untouched."""

    name = "apertium"

    @classmethod
    def pairs(cls) -> set[tuple[str, str]]:
        modes = _apertium_modes()
        return {pair for pair, mode in _APERTIUM_MODES.items() if mode in modes}

    @classmethod
    @functools.cache
    def version(cls) -> str:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Package}=${Version} ", "apertium", "apertium-eng-spa",
                              "apertium-es-pt"], capture_output=True, text=True, check=False).stdout
        return out.strip() or "unknown"

    def _run(self, text: str, mode: str) -> str:
        proc = subprocess.run(["apertium", "-u", mode], input=text, capture_output=True, text=True,
                              check=False, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"apertium {mode} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
        return proc.stdout

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        mode = _APERTIUM_MODES.get((src, tgt))
        if mode is None or mode not in _apertium_modes():
            raise NoRouteError(f"apertium cannot translate {src}→{tgt} here; it has {sorted(self.pairs())}")
        if not texts:
            return []
        joined = "".join(t + _SEP.format(i) for i, t in enumerate(texts))
        parts = _SEP_RE.split(self._run(joined, mode))
        # split() gives [text0, "0", text1, "1", ..., ""]: pair each text with its marker number.
        got = {int(parts[i + 1]): parts[i].strip() for i in range(0, len(parts) - 1, 2)}
        if sorted(got) != list(range(len(texts))):
            # A marker was mangled: fall back to one call per text rather than misalign rows.
            return [self._run(t, mode).strip() for t in texts]
        return [got[i] for i in range(len(texts))]


@TRANSLATORS.register("identity")
class IdentityTranslator(Translator):
    """Source language equals target language: nothing to do."""

    name = "identity"

    @classmethod
    def pairs(cls) -> set[tuple[str, str]]:
        return set()

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        return list(texts)


def make_translator(name: str, **options: Any) -> Translator:
    return TRANSLATORS.get(name)(**options)


def plan_route(src: str, tgt: str, prefer: Sequence[str], has_reference: Callable[[str], bool] | None = None,
               max_hops: int = 3) -> list[Hop] | str:
    """The first workable route in order of preference: "reference" (a string) when the data set carries
    a human translation into `tgt`, else the shortest chain of hops through one translator."""
    if src == tgt:
        return [Hop("identity", src, tgt)]
    for name in prefer:
        if name == REFERENCE:
            if has_reference is not None and has_reference(tgt):
                return REFERENCE
            continue
        edges = TRANSLATORS.get(name).pairs()
        path = _shortest_path(edges, src, tgt, max_hops)
        if path:
            return [Hop(name, a, b) for a, b in path]
    available = {name: sorted(TRANSLATORS.get(name).pairs()) for name in prefer if name != REFERENCE}
    raise NoRouteError(
        f"no translation route {src}→{tgt} with translators {list(prefer)}; pairs available here: {available}"
        f"{' (reference translations: none for ' + tgt + ')' if REFERENCE in prefer else ''}. "
        "Install the missing Apertium package, add a translator to translate.prefer, or drop the language."
    )


def _shortest_path(edges: set[tuple[str, str]], src: str, tgt: str, max_hops: int) -> list[tuple[str, str]]:
    queue: deque[tuple[str, list[tuple[str, str]]]] = deque([(src, [])])
    seen = {src}
    while queue:
        node, path = queue.popleft()
        if len(path) >= max_hops:
            continue
        for a, b in sorted(edges):
            if a == node and b not in seen:
                if b == tgt:
                    return [*path, (a, b)]
                seen.add(b)
                queue.append((b, [*path, (a, b)]))
    return []


def route_name(route: list[Hop] | str) -> str:
    if isinstance(route, str):
        return route
    return "+".join(f"{h.translator}:{h.src}-{h.tgt}" for h in route)


# ---- transformers seq2seq (NLLB-200, M2M-100, MADLAD) -----------------------------------------------

class Seq2SeqTranslator(Translator):
    """A transformers encoder-decoder translation model. Language codes differ per family: NLLB uses
    FLORES-200 codes ("spa_Latn") set as the tokenizer's src_lang and forced as the first decoded token,
    M2M-100 uses ISO codes the same way, MADLAD prefixes the source with "<2xx>"."""

    family: ClassVar[str] = "nllb"
    default_model: ClassVar[str] = "facebook/nllb-200-distilled-600M"

    def __init__(self, model: str | None = None, max_new_tokens: int = 256, device: str | None = None) -> None:
        import os

        self.model_id = model or os.environ.get(f"SAFEDRIFT_{self.family.upper()}_MODEL") or self.default_model
        self.max_new_tokens = max_new_tokens
        self.device = device
        self._model: Any = None
        self._tok: Any = None

    @classmethod
    def pairs(cls) -> set[tuple[str, str]]:
        from pipelines.registries.languages import LANGUAGES

        codes = LANGUAGES.names()
        return {(a, b) for a in codes for b in codes if a != b}

    def code(self, lang: str) -> str:
        from pipelines.registries.languages import LANGUAGES

        return {"nllb": LANGUAGES.get(lang).nllb, "m2m100": lang, "madlad": lang}[self.family]

    def _load(self) -> None:
        if self._model is None:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.model_id)
            self._model = AutoModelForSeq2SeqLM.from_pretrained(self.model_id).eval()
            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model.to(self.device)

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        import torch

        if not texts:
            return []
        self._load()
        tok = self._tok
        inputs = list(texts)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": 1, "do_sample": False}
        if self.family == "madlad":
            inputs = [f"<2{tgt}> {t}" for t in inputs]
        else:
            tok.src_lang = self.code(src)
            gen_kwargs["forced_bos_token_id"] = tok.convert_tokens_to_ids(self.code(tgt))
        enc = tok(inputs, return_tensors="pt", padding=True, truncation=True, max_length=512).to(self.device)
        with torch.inference_mode():
            out = self._model.generate(**enc, **gen_kwargs)
        return [s.strip() for s in tok.batch_decode(out, skip_special_tokens=True)]


@TRANSLATORS.register("nllb")
class NllbTranslator(Seq2SeqTranslator):
    name = "nllb"
    family = "nllb"
    default_model = "facebook/nllb-200-distilled-600M"


@TRANSLATORS.register("m2m100")
class M2M100Translator(Seq2SeqTranslator):
    name = "m2m100"
    family = "m2m100"
    default_model = "facebook/m2m100_418M"


@TRANSLATORS.register("madlad")
class MadladTranslator(Seq2SeqTranslator):
    name = "madlad"
    family = "madlad"
    default_model = "google/madlad400-3b-mt"
