"""Apertium for real (Debian packages, offline)."""

from __future__ import annotations

import pytest

from pipelines.translate.translators import NoRouteError, make_translator


@pytest.fixture
def apertium(require_tool):
    require_tool("apertium")
    return make_translator("apertium")


def test_translates_en_es_and_keeps_alignment(apertium) -> None:
    texts = [f"The cat number {i} is on the table.\nIt sleeps." for i in range(40)] + ["Write a poem.", ""]
    out = apertium.translate(texts, "en", "es")
    assert len(out) == len(texts)
    assert "gato" in out[0] and "mesa" in out[0] and "\n" in out[0]  # line breaks inside a text survive
    assert "39" in out[39]  # the 40th text is still the 40th: no misalignment
    assert "poema" in out[40]


def test_pivot_hops_reach_portuguese(apertium) -> None:
    (es,) = apertium.translate(["I want to write a letter to my friend."], "en", "es")
    (pt,) = apertium.translate([es], "es", "pt")
    assert es != pt and "amigo" in pt


def test_unsupported_pair_is_refused(apertium) -> None:
    with pytest.raises(NoRouteError, match="apertium cannot translate en→zh"):
        apertium.translate(["hello"], "en", "zh")
