"""Debian's rule-based Apertium, offline: en↔es and es↔pt (so en→pt through es)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Sequence

from pipelines.errors import NoRouteError
from pipelines.translate.translators.base import Translator

_APERTIUM_MODES = {("en", "es"): "eng-spa", ("es", "en"): "spa-eng", ("es", "pt"): "es-pt", ("pt", "es"): "pt-es"}
_SEP = "\n\n[[[{}]]]\n\n"
_SEP_RE = re.compile(r"\s*\[\[\[(\d+)\]\]\]\s*")


@functools.cache
def _apertium_modes() -> frozenset[str]:
    if shutil.which("apertium") is None:
        return frozenset()
    out = subprocess.run(["apertium", "-l"], capture_output=True, text=True, check=False).stdout
    return frozenset(line.strip() for line in out.splitlines() if line.strip())


class ApertiumTranslator(Translator):
    """Debian's rule-based Apertium (offline). A batch goes through one process call, texts separated
    by numbered marker paragraphs that Apertium passes through untouched."""


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
