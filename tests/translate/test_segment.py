from __future__ import annotations

from pipelines.translate.segment import join, split


def test_identity_round_trip_is_exact() -> None:
    texts = ["", "   ", "One sentence.", "First. Second! Third?\n\n  Indented line.\n- item one\n- item two\n",
             "Numbers 3.5 and 10.2 stay. Next one.", "中文句子。第二句！", "1. 2. 3.", "trailing space  "]
    for t in texts:
        segs, tpl = split(t)
        assert join(tpl, segs) == t


def test_sentences_translated_structure_kept() -> None:
    text = "Hello there. How are you?\n\nSecond paragraph here.\n  - a list item"
    segs, tpl = split(text)
    assert segs == ["Hello there.", "How are you?", "Second paragraph here.", "- a list item"]
    out = join(tpl, [s.upper() for s in segs])
    assert out == "HELLO THERE. HOW ARE YOU?\n\nSECOND PARAGRAPH HERE.\n  - A LIST ITEM"


def test_max_chars_keeps_short_lines_whole_and_code_untouched() -> None:
    segs, _ = split("Short. Line.", max_chars=100)
    assert segs == ["Short. Line."]
    segs, _ = split("Short. Line.", max_chars=5)
    assert segs == ["Short.", "Line."]
    code = "Run this:\n```\nx = 1. y = 2\n```"
    segs, tpl = split(code)
    assert segs == [code] and join(tpl, ["T"]) == "T"
    segs, tpl = split("42\n---\n")  # nothing to translate: all literal
    assert segs == [] and join(tpl, []) == "42\n---\n"
