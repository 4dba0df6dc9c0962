"""Translators and routes. Every translator turns a batch of texts from one language into another; a
route is a chain of hops (en→es→pt through Apertium), planned per language pair from the translators the
config prefers. "reference" is special: it reads a human translation that the data set carries, so it is
a route of its own rather than a hop.

The registry names each translator once, lazily, so planning never imports transformers or vLLM; a
user's translator registers from its own module (``import_modules``) with ``@TRANSLATORS.register``.
Its constructor's keyword arguments are its ``translate.options.<name>``. The base class lives in base.py
(re-exported here): a translator of this package imports it from there, never from this registry that
names it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.errors import NoRouteError
from pipelines.registry import Registry
from pipelines.translate.translators.base import Translator, all_pairs

REFERENCE = "reference"

# Translator and all_pairs re-exported: callers read them from the package.
__all__ = ["REFERENCE", "TRANSLATORS", "Hop", "IdentityTranslator", "NoRouteError", "Translator", "all_pairs",
           "make_translator", "plan_route", "route_name"]


TRANSLATORS: Registry[type[Translator]] = Registry("translator", {
    "apertium": "pipelines.translate.translators.apertium:ApertiumTranslator",
    "identity": "pipelines.translate.translators:IdentityTranslator",
    "nllb": "pipelines.translate.translators.seq2seq:NllbTranslator",
    "m2m100": "pipelines.translate.translators.seq2seq:M2M100Translator",
    "madlad": "pipelines.translate.translators.seq2seq:MadladTranslator",
    "llm": "pipelines.translate.translators.llm:LlmTranslator",
})


@dataclass(frozen=True)
class Hop:
    translator: str
    src: str
    tgt: str


class IdentityTranslator(Translator):
    """Source language equals target language: nothing to do."""

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
