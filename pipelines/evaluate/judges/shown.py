"""Which measured agreement is shown for a language (the report, MLflow and the service's /v1/info): of the
validity rows (validity.py), the one that matches how the language is judged (policy.py's mode), preferring
labels of answers like the ones judged — a user's own, then the laptop's hand-labelled small-model answers —
over XSTest's translated ones, with both figures beside the one shown. Pure functions of the rows, so the
policy can show them without measuring anything."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.evaluate.judges.labels import AS_WRITTEN, BACK_TRANSLATED, DEV, HUMAN, USER

BACK_TRANSLATE = "back-translate"  # policy.py's mode (policy imports this module)


def _small(r: dict[str, Any]) -> bool:
    return r["source"].startswith(USER) or r["source"] == DEV


def _xstest_row(rows: Sequence[dict[str, Any]], lang: str, mode: str) -> dict[str, Any] | None:
    """XSTest's row for how `lang` is judged: back-translated labels for a back-translated language,
    as-written ones for a native one (people's own labels before translated ones), none for a language
    judged as written by a judge that does not read it."""
    if mode == AS_WRITTEN:
        return None
    condition = BACK_TRANSLATED if mode == BACK_TRANSLATE else AS_WRITTEN
    mine = [r for r in rows if r["lang"] == lang and r["condition"] == condition and r["n"] and not _small(r)]
    mine.sort(key=lambda r: r["source"] != HUMAN)
    return mine[0] if mine else None


def _small_row(rows: Sequence[dict[str, Any]], lang: str, mode: str) -> dict[str, Any] | None:
    """Small models' answers judged in `mode`: a user's own file before laptop-dev."""
    mine = [r for r in rows if r["lang"] == lang and r["n"] and r.get("mode") == mode and _small(r)]
    mine.sort(key=lambda r: not r["source"].startswith(USER))
    return mine[0] if mine else None


def row_for(rows: Sequence[dict[str, Any]], lang: str, mode: str) -> dict[str, Any] | None:
    """The validity row shown for `lang`, judged in `mode` (policy.py), None: unvalidated. In order: the
    user's own labels (judged in that mode); XSTest's human labels as people wrote them (English); the
    laptop-dev labels (answers like the ones judged, judged in that mode); XSTest translated into `lang`
    (or back)."""
    small, xs = _small_row(rows, lang, mode), _xstest_row(rows, lang, mode)
    if small is not None and small["source"].startswith(USER):
        return small
    if xs is not None and xs["source"] == HUMAN:
        return xs
    return small or xs


# Each figure shown beside the headline one (policy.languages_info, /v1/info).
BESIDE = ("source", "n", "kappa", "kappa_ci_low", "kappa_ci_high", "accuracy", "rate_error", "non_answer_recall")


def beside(rows: Sequence[dict[str, Any]], lang: str, mode: str) -> dict[str, Any]:
    """Both figures for `lang` judged in `mode`, whichever row_for shows: {"xstest": ..., "small_models":
    ...}, each the BESIDE fields of its row or None."""
    pick = {"xstest": _xstest_row(rows, lang, mode), "small_models": _small_row(rows, lang, mode)}
    return {k: {f: r.get(f) for f in BESIDE} if r else None for k, r in pick.items()}
