"""Splitting long texts into sentences for translation, and putting them back together.

Machine translators work best (and NLLB/M2M only work) sentence by sentence, and sentence-sized segments
make the translation cache reusable across texts. A text becomes a template: literal pieces (line breaks,
blank lines, the spaces between sentences, leading/trailing whitespace) kept as they are, and segments
(the sentences) that are translated; reassembly fills the translations back in, so paragraph and line
structure survive translation."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at . ! ? (or their CJK forms, or a Devanagari danda) followed by spaces; line breaks
# always separate. Decimal points ("3.5") and abbreviations without a following space are not split.
_BOUNDARY = re.compile(r"(\n+|(?<=[.!?;])[ \t]+(?=\S)|(?<=[。！？；।])[ \t]*(?=\S))")
_CODE_FENCE = "```"


@dataclass(frozen=True)
class Template:
    """pieces[i] is literal text when i is in `literal`, else a placeholder for segment number
    pieces[i] (as a str index into the segment list)."""

    pieces: tuple[str, ...]
    is_segment: tuple[bool, ...]

    @property
    def n_segments(self) -> int:
        return sum(self.is_segment)


def split(text: str, max_chars: int = 0) -> tuple[list[str], Template]:
    """Segments of `text` and the template that reassembles them. With max_chars > 0, a line is split
    into sentences only when it is longer than that (short lines stay whole: more context per call)."""
    pieces: list[str] = []
    is_seg: list[bool] = []
    segments: list[str] = []

    def literal(s: str) -> None:
        if s:
            pieces.append(s)
            is_seg.append(False)

    def segment(s: str) -> None:
        # Leading/trailing whitespace is kept literally: translators strip it.
        core = s.strip()
        if not core or not any(ch.isalpha() for ch in core):
            literal(s)  # numbers, punctuation and code-ish lines are copied, not translated
            return
        lead = s[: len(s) - len(s.lstrip())]
        trail = s[len(s.rstrip()):]
        literal(lead)
        pieces.append(str(len(segments)))
        is_seg.append(True)
        segments.append(core)
        literal(trail)

    if _CODE_FENCE in text:
        # Code blocks are not prose: keep the whole text as one segment rather than mangle the code.
        segment(text)
        return segments, Template(tuple(pieces), tuple(is_seg))
    for j, part in enumerate(re.split(r"(\n+)", text)):
        if j % 2 == 1:
            literal(part)
            continue
        if max_chars and len(part) <= max_chars:
            segment(part)
            continue
        for k, sub in enumerate(_BOUNDARY.split(part)):
            if k % 2 == 1:
                literal(sub)
            else:
                segment(sub)
    return segments, Template(tuple(pieces), tuple(is_seg))


def join(template: Template, translated: list[str]) -> str:
    """The text with every segment replaced by its translation."""
    if len(translated) != template.n_segments:
        raise ValueError(f"template has {template.n_segments} segments, got {len(translated)} translations")
    return "".join(translated[int(p)] if seg else p for p, seg in zip(template.pieces, template.is_segment,
                                                                          strict=True))
