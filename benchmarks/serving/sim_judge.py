"""A judge that costs like a model: a fixed cost per call (a forward pass on an accelerator, which does
not load the CPU) plus a small cost per item. Registered as ``simulated-model`` when imported; the
benchmark names this module in the service config's ``judge.import_modules``."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pipelines.registries.judges import JUDGES, Judge, JudgeItem, Verdict, make_judge


class SimulatedModelJudge(Judge):
    name = "simulated-model"
    version = "1"

    def __init__(self, call_s: float = 0.025, item_s: float = 0.0005) -> None:
        self.call_s, self.item_s = call_s, item_s
        self._labels = make_judge("refusal-phrase")  # real labels, simulated cost

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        time.sleep(self.call_s + self.item_s * len(items))
        return self._labels.judge(items)


if "simulated-model" not in JUDGES:
    JUDGES.add("simulated-model", SimulatedModelJudge)
