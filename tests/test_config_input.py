"""Config files are trusted input, read with bounds (issue 30, item 9): `config show` and `plan` import
none of a config's `import_modules` unless asked (`--import`), and a YAML alias bomb is refused at once
instead of hanging the loader. Through the real CLI, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARKER_MODULE = '''from pathlib import Path\nPath(__file__).with_name("imported.txt").write_text("ran")\n'''


def _cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("command", [["config", "show"], ["plan"]])
def test_reading_a_config_runs_none_of_its_code_unless_asked(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "user_plugin.py").write_text(MARKER_MODULE)
    marker = tmp_path / "imported.txt"
    shown = _cli(*command, "-c", "smoke", "import_modules=[user_plugin]", pythonpath=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert not marker.exists()  # was: imported (its code ran) by merely showing the config
    assert "pass --import" in shown.stdout + shown.stderr
    asked = _cli(*command, "--import", "-c", "smoke", "import_modules=[user_plugin]", pythonpath=tmp_path)
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert marker.read_text() == "ran" and "pass --import" not in asked.stdout + asked.stderr


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)  # 9^9 (387 million) values once expanded: the loader used to hang on it
    t0 = time.monotonic()
    proc = _cli("config", "show", "-c", str(bomb))
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    assert "aliases" in proc.stderr and "over 100,000" in proc.stderr
    flat = BOMB.replace("\n", ", ").rstrip(", ")
    proc = _cli("config", "show", "-c", "smoke", f"judge.options={{{flat}}}")
    assert proc.returncode != 0 and "override 'judge.options'" in proc.stderr
