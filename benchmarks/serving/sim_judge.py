"""A judge that costs like a model: a fixed cost per call (a forward pass on an accelerator, which does
not load the CPU) plus a small cost per item. Registered as ``simulated-model`` when imported; the
benchmark names this module in the service config's ``judge.import_modules``.

For the fault benchmark and the serving tests it can also misbehave on marked items, as a real judge
does on input it cannot take (a tokenizer's limit, a parser's bad case): ``reject_marker`` makes the whole
call raise ``ValueError`` when any item's response contains it, and ``slow_marker`` adds ``slow_s`` to a
call that holds a marked item (a long generation). ``down_file`` makes every call raise ``ConnectionError``
while that file exists: a judge whose model server is down (the 5xx tests switch it on and off)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from pipelines.evaluate.judges import JUDGES, Judge, JudgeItem, Verdict, make_judge


class SimulatedModelJudge(Judge):
    name = "simulated-model"
    version = "1"

    def __init__(self, call_s: float = 0.025, item_s: float = 0.0005, reject_marker: str | None = None,
                 slow_marker: str | None = None, slow_s: float = 0.0, languages: list[str] | None = None,
                 down_file: str | None = None) -> None:
        # Like the phrase judge it wraps it reads every language, unless told which (the language policy's tests).
        self.native_languages = frozenset(languages) if languages else None  # type: ignore[misc]
        self.call_s, self.item_s = call_s, item_s
        self.reject_marker, self.slow_marker, self.slow_s = reject_marker, slow_marker, slow_s
        self.down_file = down_file
        self._labels = make_judge("refusal-phrase")  # real labels, simulated cost

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        slow = bool(self.slow_marker) and any(self.slow_marker in i.response for i in items)  # type: ignore[operator]
        time.sleep(self.call_s + self.item_s * len(items) + (self.slow_s if slow else 0.0))
        if self.down_file and os.path.exists(self.down_file):
            raise ConnectionError("simulated judge down: its model server does not answer")
        if self.reject_marker and any(self.reject_marker in i.response for i in items):
            raise ValueError("simulated judge failure on a marked item")
        return self._labels.judge(items)


if "simulated-model" not in JUDGES:
    JUDGES.add("simulated-model", SimulatedModelJudge)
