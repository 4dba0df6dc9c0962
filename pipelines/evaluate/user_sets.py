"""Capability sets a user brings as JSONL files: MMLU-style multiple choice ({question, choices, answer})
and AlpacaEval-style instructions with reference answers ({instruction, output}). Read and checked once,
before any work starts, so a bad file fails the run at the start with the line and the fix, not after an
hour of fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.errors import DataError

LETTERS = "ABCDEFGH"


class UserFileError(DataError):
    """A user's evaluation file (evaluate.mmlu_path, evaluate.alpacaeval_path) is missing or malformed."""


def read_jsonl(path: str | Path, required: dict[str, type | tuple[type, ...]], kind: str,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each checked for the required keys and their types; the first bad line
    raises UserFileError naming the file, the line and what it should look like."""
    p = Path(path)
    example = json.dumps({k: "…" for k in required})
    if not p.is_file():
        raise UserFileError(f"{kind} file {p} does not exist; give a JSONL file with one {example} per line, "
                            f"or unset the option")
    rows: list[dict[str, Any]] = []
    for no, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserFileError(f"{p}:{no}: not JSON ({e.msg}); each line must be one object like {example}") from None
        if not isinstance(row, dict):
            raise UserFileError(f"{p}:{no}: a {type(row).__name__}, not an object like {example}")
        for key, typ in required.items():
            if key not in row:
                raise UserFileError(f"{p}:{no}: missing key {key!r}; each line must look like {example}")
            if not isinstance(row[key], typ):
                raise UserFileError(f"{p}:{no}: {key!r} is a {type(row[key]).__name__}; expected {typ}")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise UserFileError(f"{kind} file {p} has no rows; give a JSONL file with one {example} per line")
    return rows


def mmlu_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = read_jsonl(path, {"question": str, "choices": list, "answer": (int, str)}, "MMLU-style", limit)
    for no, r in enumerate(rows, start=1):
        n = len(r["choices"])
        if not 2 <= n <= len(LETTERS):
            raise UserFileError(f"{path}: row {no} has {n} choices; give 2 to {len(LETTERS)}")
        gold = r["answer"]
        idx = gold if isinstance(gold, int) else LETTERS.find(gold.strip().upper()) if len(gold.strip()) == 1 else -1
        if not 0 <= idx < n:
            raise UserFileError(f"{path}: row {no} answer {gold!r} is not one of its {n} choices "
                                f"(an index 0–{n - 1} or a letter A–{LETTERS[n - 1]})")
        r["answer"] = idx
    return rows


def alpaca_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    return read_jsonl(path, {"instruction": str, "output": str}, "AlpacaEval-style", limit)


def check_user_files(evaluate: Any) -> None:
    """Fail before the study starts when a configured user file is missing or malformed."""
    if evaluate.mmlu_path:
        mmlu_rows(evaluate.mmlu_path, evaluate.user_set_limit)
    if evaluate.alpacaeval_path:
        alpaca_rows(evaluate.alpacaeval_path, evaluate.user_set_limit)
