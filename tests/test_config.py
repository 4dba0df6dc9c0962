from __future__ import annotations

import pytest

from pipelines.cells import study_cells
from pipelines.errors import ConfigError, UnknownNameError
from pipelines.presets import load_config


@pytest.mark.parametrize("preset", ["smoke", "laptop", "paper"])
def test_presets_load(preset: str) -> None:
    cfg = load_config(preset)
    assert cfg.name == preset
    assert cfg.models and cfg.ft_langs and cfg.eval_langs


def test_laptop_is_the_study_the_issue_describes() -> None:
    cfg = load_config("laptop")
    # A base that answers in every eval language and refuses on its own (benchmarks/models/RESULTS.md).
    assert cfg.models == ["qwen2.5-coder-0.5b-instruct"]
    assert cfg.seeds == [0, 1, 2] and cfg.data.eval.n_harmful >= 50
    assert cfg.ft_langs == ["en", "es", "zh"]
    assert cfg.eval_langs == ["en", "es", "pt", "zh"]
    assert cfg.data.benign.native == {"zh": "alpaca_zh"}


def test_quick_is_the_laptop_study_in_small() -> None:
    quick, laptop = load_config("quick"), load_config("laptop")
    assert quick.models == laptop.models and quick.eval_langs == laptop.eval_langs
    assert quick.seeds == [0] and set(quick.ft_langs) < set(laptop.ft_langs)
    assert quick.data.eval.n_harmful < laptop.data.eval.n_harmful
    assert quick.judge == laptop.judge and quick.finetune == laptop.finetune


def test_paper_grid() -> None:
    cfg = load_config("paper")
    assert len(cfg.models) == 6 and len(cfg.ft_langs) == 9 and cfg.seeds == [0, 1, 2] and cfg.epochs == [1, 3]
    assert (cfg.finetune.lora.r, cfg.finetune.lora.alpha, cfg.finetune.lr) == (8, 8, 5e-5)
    cells = study_cells(cfg)
    assert len(cells) == 6 * (9 * 3 * 2 + 1)
    assert len({c.id for c in cells}) == len(cells)  # deterministic and unique names


def test_overrides_are_typed_and_change_the_hash() -> None:
    base = load_config("smoke")
    cfg = load_config("smoke", ["finetune.lr=1e-4", "eval_langs=[en,zh]", "seeds=[0,1]"])
    assert cfg.finetune.lr == 1e-4 and cfg.eval_langs == ["en", "zh"] and cfg.seeds == [0, 1]
    assert cfg.digest() != base.digest()
    assert load_config("smoke").digest() == base.digest()


def test_bad_input_fails_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="not key=value"):
        load_config("smoke", ["finetune.lr"])
    with pytest.raises(ConfigError, match="finetune.lrr"):
        load_config("smoke", ["finetune.lrr=1"])  # typo'd keys are rejected, not ignored
    with pytest.raises(ConfigError, match="lr"):
        load_config("smoke", ["finetune.lr=-1"])
    with pytest.raises(UnknownNameError, match="known languages: .*es.*zh"):
        load_config("smoke", ["eval_langs=[en,xx]"])
    with pytest.raises(UnknownNameError, match="known models: .*smollm2"):
        load_config("smoke", ["models=[gpt-9]"])
    with pytest.raises(ConfigError, match="preset .*laptop.*smoke"):
        load_config("nonexistent")
