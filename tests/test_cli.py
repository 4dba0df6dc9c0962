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


def test_list_describes_every_entry() -> None:
    for kind, expect in (("models", "smollm2-135m-instruct"), ("languages", "Chinese"), ("backends", "vllm"),
                         ("translators", "apertium"), ("datasets", "CC BY 4.0")):
        proc = safedrift("list", kind)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert any(expect in line for line in lines), (kind, proc.stdout)
        # every entry has a description after its name, not just the name
        assert all(len(line.split(None, 1)) == 2 for line in lines), (kind, proc.stdout)


def test_help_shows_the_readme_examples_and_the_flags() -> None:
    run = safedrift("run", "--help").stdout
    assert "--resume, --no-resume" in run and "safedrift run -c smoke" in run
    serve = safedrift("serve", "--help").stdout
    assert "--serve-config" in serve and "--config" not in serve.replace("--serve-config", "")
    assert "safedrift report --sweep-dir" in safedrift("report", "--help").stdout
    assert "safedrift list models" in safedrift("--help").stdout


def test_resume_is_one_flag_with_a_negation() -> None:
    from pipelines.cli import build_parser

    parser = build_parser()
    for cmd in ("run", "sweep"):
        assert parser.parse_args([cmd]).resume is True
        assert parser.parse_args([cmd, "--no-resume"]).resume is False
        assert parser.parse_args([cmd, "--resume"]).resume is True


def test_user_errors_exit_2_and_bugs_keep_their_traceback(monkeypatch, capsys) -> None:
    import pytest

    from pipelines import cli
    from pipelines.errors import DataError

    def fixable(args):
        raise DataError("the file x is missing: set data.benign.source")

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_config_show", fixable)
    assert cli.main(["config", "show", "-c", "smoke"]) == 2
    assert "safedrift: error: the file x is missing" in capsys.readouterr().err
    monkeypatch.setattr(cli, "cmd_config_show", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["config", "show", "-c", "smoke"])
