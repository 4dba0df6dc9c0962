"""Loading a study config: the YAML preset and its ``key=value`` overrides (config.parse_config), the
user's own modules imported (``import_modules``), then every name checked against its registry and every
component's options bound to its constructor — so a typo fails here, naming what exists, before any
work. Kept apart from the schema (config.py) because it reads every stage's registry, and every stage
reads the schema."""

from __future__ import annotations

from pipelines.config import DEFAULT_PRESET, StudyConfig, parse_config
from pipelines.evaluate.backends import BACKENDS
from pipelines.evaluate.judges import JUDGES
from pipelines.evaluate.judges.policy import check_judge_config
from pipelines.finetune.align import check_disjoint
from pipelines.registries.datasets import DATASETS, USER_PREFIXES
from pipelines.registries.languages import LANGUAGES
from pipelines.registries.models import MODELS
from pipelines.registry import bind_options, import_modules
from pipelines.translate.translators import REFERENCE, TRANSLATORS


def load_config(name_or_path: str = DEFAULT_PRESET, overrides: list[str] | None = None) -> StudyConfig:
    cfg = parse_config(name_or_path, overrides)
    check_components(cfg)
    return cfg


def check_components(cfg: StudyConfig) -> None:
    """Every registry name the config uses exists, and every component's options fit its constructor.
    Also run in each Ray worker that rebuilds the config, so user modules register there too."""
    import_modules(cfg.import_modules)
    for code in [*cfg.ft_langs, *cfg.eval_langs, *cfg.data.benign.native]:
        LANGUAGES.check(code)
    for alias in cfg.models:
        MODELS.check(alias)
    for name in [cfg.data.benign.source, cfg.data.eval.harmful, *cfg.data.eval.safe, *cfg.data.benign.native.values()]:
        if not name.startswith(USER_PREFIXES) and name != "sorrybench":
            DATASETS.check(name)
    bind_options("judge", cfg.judge.name, JUDGES.get(cfg.judge.name), cfg.judge.options)
    if cfg.judge.second:
        bind_options("judge", cfg.judge.second, JUDGES.get(cfg.judge.second), cfg.judge.second_options)
    check_judge_config(cfg.judge, cfg.eval_langs)  # label files parse; every eval language can be judged
    bind_options("generation backend", cfg.generate.backend, BACKENDS.get(cfg.generate.backend),
                 cfg.generate.options)
    for name in {*cfg.translate.prefer, *cfg.judge.translate_prefer} - {REFERENCE}:
        TRANSLATORS.check(name)
    for name, options in cfg.translate.options.items():
        bind_options("translator", name, TRANSLATORS.get(name), options)
    check_disjoint(cfg)  # an aligned base's own training rows must not be fine-tuned or held out again
