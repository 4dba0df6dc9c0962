from __future__ import annotations

import subprocess
import sys

import yaml


def safedrift(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_config_show_prints_the_resolved_config() -> None:
    proc = safedrift("config", "show", "-c", "smoke", "finetune.lr=0.01", "eval_langs=[en,zh]")
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["finetune"]["lr"] == 0.01 and shown["eval_langs"] == ["en", "zh"]
    assert "# config hash: " in proc.stdout


def test_bad_input_exits_2_with_a_message() -> None:
    proc = safedrift("config", "show", "-c", "smoke", "eval_langs=[en,klingon]")
    assert proc.returncode == 2
    assert "unknown language 'klingon'" in proc.stderr and "known languages" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_list_registries() -> None:
    proc = safedrift("list", "judges")
    assert proc.returncode == 0 and "refusal-phrase" in proc.stdout
