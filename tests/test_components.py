"""One entry adds a thing: registry names are written once, options are bound when the config loads, and
a judge from a user's own module (outside the package, through import_modules) runs a real cell."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cells import Cell
from pipelines.errors import ConfigError, SafedriftError, UnknownNameError
from pipelines.evaluate import Weights, evaluate_cell
from pipelines.evaluate.backends import BACKENDS
from pipelines.evaluate.judges import JUDGES
from pipelines.presets import load_config
from pipelines.registries.model_store import model_dir
from pipelines.registry import Registry
from pipelines.translate import build_datasets
from pipelines.translate.translators import TRANSLATORS

REPO = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).resolve().parent / "plugins_outside"


def test_lazy_entries_take_their_name_from_the_registry() -> None:
    # The class declares no name: the registry entry is the one place it is written.
    assert JUDGES.get("refusal-phrase").name == "refusal-phrase"
    assert TRANSLATORS.get("apertium").name == "apertium"
    assert BACKENDS.get("transformers").name == "transformers"
    assert "name" not in JUDGES.get("trained-minilm").__dict__ or JUDGES.get("trained-minilm").name == "trained-minilm"


def test_listing_and_checking_names_imports_nothing_heavy() -> None:
    code = ("import sys; from pipelines.presets import load_config; load_config('laptop'); "
            "print(sorted(m for m in ('torch', 'sklearn', 'vllm', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_unknown_names_suggest_the_closest() -> None:
    reg: Registry[int] = Registry("widget", {"alpha": 1, "beta": 2})
    with pytest.raises(UnknownNameError, match="did you mean 'alpha'.*known widgets: alpha, beta"):
        reg.get("alpah")
    assert issubclass(UnknownNameError, SafedriftError)


def test_component_options_are_bound_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match=r"judge 'refusal-phrase' has no option\(s\) \['windw'\]; it accepts: window"):
        load_config("smoke", ["judge.options={windw: 10}"])
    with pytest.raises(ConfigError, match=r"translator 'nllb' has no option\(s\) \['modle'\].*model"):
        load_config("smoke", ["translate.options={nllb: {modle: x}}"])
    with pytest.raises(ConfigError, match=r"generation backend 'transformers' has no option\(s\) \['sort'\]"):
        load_config("smoke", ["generate.options={sort: false}"])
    with pytest.raises(UnknownNameError, match="known generation backends: .*transformers.*vllm"):
        load_config("smoke", ["generate.backend=tgi"])
    assert load_config("smoke", ["judge.options={window: 10}"]).judge.options == {"window": 10}


def test_a_missing_user_module_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="import_modules: cannot import 'no_such_plugin'.*PYTHONPATH"):
        load_config("smoke", ["import_modules=[no_such_plugin]"])


@pytest.mark.e2e
def test_plugin_judge_from_outside_the_package_runs_a_cell(tmp_path: Path, monkeypatch, ray_cluster) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    cfg = load_config("smoke", [f"workdir={tmp_path}", "import_modules=[acme_judges]", "judge.name=acme-length",
                                "judge.options={min_chars: 3}", "eval_langs=[en]", "evaluate.drift=false",
                                "evaluate.ppl_tokens=0", "judge.agreement=false"])
    from acme_judges import LengthJudge  # registered by load_config's import, not by this line

    before = LengthJudge.calls
    ds = build_datasets(cfg, tmp_path)
    base = model_dir(cfg.models[0])
    ev = evaluate_cell(cfg, Cell(cfg.models[0], "base"), Weights(base, base), ds.path, tmp_path / "cell")
    n = ev.judged.height + ev.judged_safe.height
    assert n > 0 and LengthJudge.calls - before == n
    assert set(ev.judged["judge"].to_list()) == {"acme-length"}
    assert "safety/compliance_rate/en" in ev.metrics  # measured from the plugin's labels, no MLflow involved
    assert not (tmp_path / "mlflow.db").exists()
