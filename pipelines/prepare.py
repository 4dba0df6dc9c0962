"""One-time preparation of what a preset needs before its first run, cached under SAFEDRIFT_CACHE:
each model converted to a transformers directory (SmolLM2 ships as GGUF) or, for an aligned base
(source="aligned", pipelines/finetune/align.py), trained, merged and saved once, and the configured judge
fitted and scored against held-out human labels. scripts/setup.sh runs it for the default preset, so
the first `safedrift run` spends its time on the study itself."""

from __future__ import annotations

import logging
import time

from pipelines.config import StudyConfig
from pipelines.evaluate.judges import make_judge
from pipelines.evaluate.judges.agreement import cached_agreement
from pipelines.finetune.align import check_disjoint
from pipelines.registries.model_store import model_dir

log = logging.getLogger(__name__)


def prepare(cfg: StudyConfig) -> dict[str, float]:
    """Seconds per step; every step is a no-op when its cache is already there."""

    took: dict[str, float] = {}
    # Before minutes of training: an aligned base must not have been trained on this study's rows.
    check_disjoint(cfg)
    for m in cfg.models:
        t0 = time.time()
        model_dir(m)
        took[f"model {m}"] = time.time() - t0
    t0 = time.time()
    judge = make_judge(cfg.judge.name, **cfg.judge.options)
    if cfg.judge.agreement:

        # Scoring the held-out labels fits a trained judge first: both end up cached.
        ag = cached_agreement(judge, cfg.judge.options, cfg.judge.agreement_limit)
        log.info("judge %s: kappa %.3f, accuracy %.3f on %d held-out labels", judge.name, ag["kappa"],
                 ag["accuracy"], int(ag["n"]))
    took[f"judge {cfg.judge.name}"] = time.time() - t0
    return took
