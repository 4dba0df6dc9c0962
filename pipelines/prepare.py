"""One-time preparation of what a preset needs before its first run, cached under SAFEDRIFT_CACHE:
each model converted to a transformers directory (SmolLM2 ships as GGUF) or, for an aligned base
(source="aligned", pipelines/align/), trained, merged and saved once, and the configured judge
fitted and its agreement with people measured in every eval language. scripts/setup.sh runs it for the default preset, so
the first `safedrift run` spends its time on the study itself."""

from __future__ import annotations

import logging
import time

from pipelines.align import check_disjoint
from pipelines.config import StudyConfig
from pipelines.evaluate.judges import make_judge
from pipelines.evaluate.judges.validity import judge_validity
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
    judges = [(cfg.judge.name, cfg.judge.options, cfg.judge.back_translate)]
    if cfg.judge.second:
        judges.append((cfg.judge.second, cfg.judge.second_options, cfg.judge.second_back_translate))
    for name, options, back_translate in judges:
        t0 = time.time()
        judge = make_judge(name, **options)
        if cfg.judge.agreement:
            # Validity per eval language (held out by source model and prompt) fits a trained judge
            # first and translates its labels: all of it ends up cached for the study's cells (the same
            # key as the cells' judge_agreement, back-translation as each judge is configured).
            rows = judge_validity(judge, options, cfg.eval_langs, cfg.judge.translate_prefer, cfg.judge.labels,
                                  cfg.judge.agreement_limit, back_translate=back_translate)
            for r in rows:
                log.info("judge %s, %s (%s): kappa %s on %s labels", name, r.get("lang"), r.get("source"),
                         r.get("kappa"), r.get("n"))
        took[f"judge {name}"] = time.time() - t0
    return took
