"""Loading a study config: the YAML preset and its ``key=value`` overrides (config.parse_config), the
user's own modules imported (``import_modules``), then every name checked against its registry and every
component's options bound to its constructor — so a typo fails here, naming what exists, before any
work. Kept apart from the schema (config.py) because it reads every stage's registry, and every stage
reads the schema."""

from __future__ import annotations

import yaml

from pipelines.align.data import check_disjoint
from pipelines.config import DEFAULT_PRESET, StudyConfig, parse_config, preset_path
from pipelines.errors import ConfigError
from pipelines.evaluate.backends import BACKENDS
from pipelines.evaluate.judges import JUDGES
from pipelines.evaluate.judges.policy import check_judge_config
from pipelines.registries.datasets import DATASETS, USER_PREFIXES
from pipelines.registries.languages import LANGUAGES
from pipelines.registries.models import MODELS
from pipelines.registry import bind_options, import_modules
from pipelines.translate.translators import REFERENCE, TRANSLATORS

# A config is a few hundred nodes; a "billion laughs" document (aliases of aliases) expands to billions
# and hung `safedrift config show`. Counted on the composed graph, where an alias is shared, not copied.
MAX_YAML_NODES = 100_000


def load_config(name_or_path: str = DEFAULT_PRESET, overrides: list[str] | None = None,
                import_user_modules: bool = True) -> StudyConfig:
    """The checked config. Config files are trusted input: ``import_modules`` runs their code. Commands
    that only read a config (``config show``, ``plan``) pass ``import_user_modules=False`` unless the user
    asks (``--import``): then nothing is imported, and the names only a user module registers are not
    checked (`unchecked_reason` says so)."""
    check_yaml_size(preset_path(name_or_path).read_text(encoding="utf-8"), str(preset_path(name_or_path)))
    for item in overrides or []:
        key, _, raw = item.partition("=")
        check_yaml_size(raw, f"override {key.strip()!r}")
    cfg = parse_config(name_or_path, overrides)
    if import_user_modules or not cfg.import_modules:
        check_components(cfg)
    return cfg


def unchecked_reason(cfg: StudyConfig, imported: bool) -> str | None:
    """Why a config loaded without importing its modules was not checked against the registries."""
    if imported or not cfg.import_modules:
        return None
    return (f"not checked against the registries: the config imports {cfg.import_modules} (import_modules), "
            "which runs their code; pass --import to import them and check every name")


def check_yaml_size(text: str, where: str) -> None:
    """ConfigError when the YAML's aliases would expand it past MAX_YAML_NODES nodes (or refer to
    themselves), before anything builds the expanded document."""
    try:
        roots = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        sizes: dict[int, int] = {}
        total = sum(_expanded(node, sizes, set()) for node in roots if node is not None)
    except yaml.YAMLError:
        return  # not YAML at all: the loader that follows names the error
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None
    if total > MAX_YAML_NODES:
        raise ConfigError(f"{where}: its aliases (*name) expand to {total:,}+ values, over {MAX_YAML_NODES:,}; "
                          "a config needs no such repetition (write the values out, or fewer aliases)")


def _expanded(node: yaml.Node, sizes: dict[int, int], path: set[int]) -> int:
    """Values in `node` once every alias is expanded (memoised per node: linear in the composed graph)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in path:
        raise ConfigError("a YAML alias refers to the value that contains it; write the value out")
    path.add(id(node))
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded(child, sizes, path) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded(k, sizes, path) + _expanded(v, sizes, path) for k, v in node.value)
    path.discard(id(node))
    sizes[id(node)] = total = min(total, MAX_YAML_NODES + 1)  # capped: the sum stays a small integer
    return total


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
