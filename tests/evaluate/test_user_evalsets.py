"""User-supplied capability files: checked before a study starts (the line and the fix named), and
scored for real on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.evaluate.user_sets import UserFileError, alpaca_rows, check_user_files, mmlu_rows
from pipelines.presets import load_config


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows), encoding="utf-8")
    return path


def test_mmlu_rows_normalise_letters_and_reject_bad_answers(tmp_path) -> None:
    ok = _jsonl(tmp_path / "m.jsonl", [{"question": "q", "choices": ["a", "b", "c"], "answer": "c"},
                                       {"question": "q2", "choices": ["a", "b"], "answer": 0}])
    assert [r["answer"] for r in mmlu_rows(ok)] == [2, 0]
    bad = _jsonl(tmp_path / "b.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "D"}])
    with pytest.raises(UserFileError, match=r"answer 'D' is not one of its 2 choices"):
        mmlu_rows(bad)


@pytest.mark.parametrize(("lines", "message"), [
    (['{"instruction": "x", "output": "y"}', "{not json"], r"a\.jsonl:2: not JSON"),
    (['{"instruction": "x"}'], r"a\.jsonl:1: missing key 'output'"),
    (['{"instruction": 3, "output": "y"}'], r"'instruction' is a int"),
    (["[1, 2]"], r"a list, not an object"),
    ([""], r"has no rows"),
])
def test_alpaca_rows_name_the_line_and_the_fix(tmp_path, lines, message) -> None:
    with pytest.raises(UserFileError, match=message):
        alpaca_rows(_jsonl(tmp_path / "a.jsonl", lines))


def test_missing_user_file_fails_before_the_study(tmp_path) -> None:
    from pipelines.run import run_study

    cfg = load_config("smoke", [f"workdir={tmp_path / 'w'}", f"evaluate.alpacaeval_path={tmp_path / 'nope.jsonl'}"])
    with pytest.raises(UserFileError, match="does not exist"):
        check_user_files(cfg.evaluate)
    with pytest.raises(UserFileError):
        run_study(cfg)
    assert not (tmp_path / "w").exists()  # nothing written, no Ray started


def test_user_file_contents_are_part_of_the_cell_hash(tmp_path) -> None:
    from pipelines.cells import cell_hash, study_cells

    f = _jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    cfg = load_config("smoke", [f"evaluate.alpacaeval_path={f}"])
    cell = study_cells(cfg)[0]
    before = cell_hash(cfg, cell, "d")
    _jsonl(f, [{"instruction": "x", "output": "z"}])
    assert cell_hash(cfg, cell, "d") != before


def test_alpacaeval_scores_on_the_tiny_model(tmp_path) -> None:
    from pipelines.config import GenerateConfig
    from pipelines.evaluate.backends.transformers import load_for_generation
    from pipelines.evaluate.capability import alpacaeval_scores
    from pipelines.registries.model_store import model_dir

    model, tok = load_for_generation(model_dir("tiny-llama"), None, threads=1)
    f = _jsonl(tmp_path / "a.jsonl", [{"instruction": "Name a colour.", "output": "Blue is a colour."},
                                      {"instruction": "Count to three.", "output": "One, two, three."},
                                      {"instruction": "Say hi.", "output": "Hi!"}])
    s = alpacaeval_scores(model, tok, f, GenerateConfig(max_new_tokens=6, batch_size=2), limit=2)
    assert s["capability/alpacaeval_n"] == 2  # the limit is applied
    assert -1.0 <= s["capability/alpacaeval_ref_sim"] <= 1.0
    assert s["capability/alpacaeval_ref_ppl"] > 1.0  # a random tiny model finds the references unlikely
    assert 0 <= s["capability/alpacaeval_answer_tokens"] <= 6
