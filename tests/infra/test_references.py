"""The manifests point at things that exist in the project: the Serve config, the RayJob's CLI and
preset, the Serve import path. A rename elsewhere in the repo must break these tests, not a cluster."""

from __future__ import annotations

import ast
import importlib.util
import runpy
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from infra_support import INFRA, REPO, one, render

SYNC = INFRA / "sync-serve-config.py"


def _base_object(kind: str) -> dict:
    for name in ("rayservice.yaml", "rayjob.yaml", "raycluster.yaml"):
        for doc in yaml.safe_load_all((INFRA / "base" / name).read_text()):
            if doc and doc["kind"] == kind:
                return doc
    raise AssertionError(f"no {kind} in infra/base")


def test_rayservice_serves_the_same_serve_config_as_serving_judge_yaml():
    judge = REPO / "serving" / "judge.yaml"
    assert judge.exists(), "serving/judge.yaml is missing"
    embedded = _base_object("RayService")["spec"]["serveConfigV2"]
    assert isinstance(embedded, str), "serveConfigV2 must be a YAML string"
    assert yaml.safe_load(embedded) == yaml.safe_load(judge.read_text()), (
        "infra/base/rayservice.yaml serveConfigV2 differs from serving/judge.yaml: "
        "run python infra/sync-serve-config.py"
    )


def test_rendered_rayservice_keeps_the_serve_config():
    # kustomize must not mangle the embedded string (it is copied, not merged).
    objs = render(INFRA / "overlays" / "gpu")
    embedded = one(objs, "RayService")["spec"]["serveConfigV2"]
    assert yaml.safe_load(embedded) == yaml.safe_load((REPO / "serving" / "judge.yaml").read_text())


def test_sync_script_reports_nothing_stale():
    proc = subprocess.run([sys.executable, str(SYNC), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sync_embed_rewrites_only_the_serve_config_block():
    embed = runpy.run_path(str(SYNC))["embed"]
    manifest = (
        "# keep me\nkind: RayService\nspec:\n  serveConfigV2: |\n    applications: []\n\n"
        "  rayClusterConfig:\n    rayVersion: '2.60.0'\n"
    )
    new = embed(manifest, "# c\napplications:\n  - name: x\n    import_path: serving.app:build_app\n")
    doc = yaml.safe_load(new)
    assert new.startswith("# keep me\n")
    assert yaml.safe_load(doc["spec"]["serveConfigV2"]) == {
        "applications": [{"name": "x", "import_path": "serving.app:build_app"}]
    }
    assert doc["spec"]["rayClusterConfig"] == {"rayVersion": "2.60.0"}
    # Idempotent: embedding the same config again changes nothing.
    assert embed(new, "# c\napplications:\n  - name: x\n    import_path: serving.app:build_app\n") == new


def _module_file(module: str) -> Path:
    path = REPO.joinpath(*module.split("."))
    candidates = [path.with_suffix(".py"), path / "__init__.py"]
    for c in candidates:
        if c.exists():
            return c
    raise AssertionError(f"module {module} not found in the repo ({', '.join(map(str, candidates))})")


def _defines(module_file: Path, name: str) -> bool:
    tree = ast.parse(module_file.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def test_serve_import_paths_exist():
    config = yaml.safe_load(_base_object("RayService")["spec"]["serveConfigV2"])
    assert config["applications"]
    for app in config["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert attr, f"import_path {app['import_path']} has no ':attribute'"
        assert _defines(_module_file(module), attr), f"{module} does not define {attr}"


@pytest.mark.parametrize("overlay_name", ["cpu-test", "gpu"])
def test_rayjob_entrypoint_refers_to_the_cli_and_a_preset(overlay_name):
    objs = render(INFRA / "overlays" / overlay_name)
    argv = shlex.split(one(objs, "RayJob")["spec"]["entrypoint"])
    assert argv[:2] == ["safedrift", "run"], argv
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "safedrift" in scripts, "pyproject.toml declares no `safedrift` console script"
    module, _, func = scripts["safedrift"].partition(":")
    assert _defines(_module_file(module), func), f"{scripts['safedrift']} does not exist"

    config_path = argv[argv.index("--config") + 1]
    assert config_path.startswith("/config/"), "the preset comes from the ConfigMap mounted at /config"
    fname = Path(config_path).name
    data = one(objs, "ConfigMap", "safedrift-study-config")["data"]
    assert fname in data, f"{fname} is not in ConfigMap safedrift-study-config"
    assert (REPO / "configs" / fname).exists(), f"configs/{fname} does not exist"
    overrides = [a for a in argv[argv.index("--config") + 2 :] if "=" in a]
    assert all(not a.startswith("-") for a in overrides)


def test_rayjob_preset_and_overrides_load(tmp_path):
    # The strongest check short of a cluster: the project's own loader accepts the preset the RayJob
    # names, with the RayJob's overrides (pydantic validation, no Ray needed).
    if importlib.util.find_spec("pipelines.config") is None:
        pytest.fail("pipelines.config is not importable")
    from pipelines.presets import load_config

    for overlay_name in ("cpu-test", "gpu"):
        objs = render(INFRA / "overlays" / overlay_name)
        argv = shlex.split(one(objs, "RayJob")["spec"]["entrypoint"])
        i = argv.index("--config")
        text = one(objs, "ConfigMap", "safedrift-study-config")["data"][Path(argv[i + 1]).name]
        preset = tmp_path / f"{overlay_name}.yaml"
        preset.write_text(text)
        load_config(str(preset), overrides=[a for a in argv[i + 2 :] if "=" in a])
