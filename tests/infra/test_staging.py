"""The model-staging Job (issue #17 point 5): rendered from infra/staging, hardened like every other pod,
the only pod with the hub token, out to public HTTPS only; its script stages what the paper preset
loads; the README creates its Secret and runs it before resuming the (suspended) sweep."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from infra_support import INFRA, REPO, by_kind, one, pod_templates, render
from netpol import Endpoint, can_connect, outside
from test_manifests import documented_secret_keys
from test_security import METADATA, PRIVATE, PUBLIC, _secret_refs, network_problems, pod_security_problems

STAGING = INFRA / "staging"


def staging_pod(objs):
    (label, labels, spec), = [t for t in pod_templates(objs) if t[0].startswith("Job/safedrift-stage")]
    return label, labels, spec


def test_staging_job_is_hardened_and_mounts_the_volume():
    objs = render(STAGING)
    assert not pod_security_problems(objs)
    _, labels, spec = staging_pod(objs)
    assert labels["app.kubernetes.io/component"] == "model-staging"
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/mnt/safedrift", "/config", "/tmp"} <= mounts
    # The script it runs is the ConfigMap generated from infra/staging/stage.py.
    script = one(objs, "ConfigMap", "safedrift-stage-script")["data"]["stage.py"]
    assert script == (STAGING / "stage.py").read_text()
    broken = copy.deepcopy(objs)
    staging_pod(broken)[2]["containers"][0]["securityContext"].pop("readOnlyRootFilesystem")
    assert pod_security_problems(broken)


def test_hub_token_only_on_the_staging_pod():
    staging = render(STAGING)
    _, _, spec = staging_pod(staging)
    assert _secret_refs(spec) == {"safedrift-hub"}
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "safedrift-hub", "key": "token"}
    for overlay in ("gpu", "cpu-test"):
        for label, _, pod in pod_templates(render(INFRA / "overlays" / overlay)):
            assert "safedrift-hub" not in _secret_refs(pod), f"{overlay} {label} reads the hub token"
    assert ("safedrift-hub", "token") in documented_secret_keys()


def test_staging_reaches_public_https_only_and_widens_nothing_else():
    gpu = render(INFRA / "overlays" / "gpu")
    staging = render(STAGING)
    pols = by_kind(gpu, "NetworkPolicy") + by_kind(staging, "NetworkPolicy")
    _, labels, _ = staging_pod(staging)
    pod = Endpoint("model-staging", labels)
    assert can_connect(pols, pod, PUBLIC, 443)
    assert can_connect(pols, pod, Endpoint("kube-dns", {"k8s-app": "kube-dns"}, "kube-system"), 53, "UDP")
    for dst, port in ((METADATA, 80), (METADATA, 443), (PRIVATE, 443), (outside("public http", "18.239.50.16"), 80)):
        assert not can_connect(pols, pod, dst, port), f"staging -> {dst.name}:{port} should be closed"
    ray_head = Endpoint("head", {"app.kubernetes.io/component": "ray-head",
                                 "app.kubernetes.io/part-of": "safedrift-sweep"})
    assert not can_connect(pols, pod, ray_head, 6379)
    # Adding the staging policy to the overlay changes no other pod's flows.
    assert not network_problems(gpu + by_kind(staging, "NetworkPolicy"))


def test_gpu_sweep_waits_for_staging_and_pods_find_the_staged_copies():
    gpu = render(INFRA / "overlays" / "gpu")
    assert one(gpu, "RayJob")["spec"]["suspend"] is True
    assert "suspend" not in one(render(INFRA / "overlays" / "cpu-test"), "RayJob")["spec"]
    env = one(gpu, "ConfigMap", "safedrift-env")["data"]
    assert env["SAFEDRIFT_MODEL_DIR"].startswith("/mnt/safedrift/")
    assert env["SAFEDRIFT_CACHE"].startswith("/mnt/safedrift/")  # not ~/.cache on a read-only root
    readme = (INFRA / "README.md").read_text()
    order = [readme.index(s) for s in ("create secret generic safedrift-hub", "kubectl apply -k infra/overlays/gpu",
                                       "kubectl apply -k infra/staging", "job/safedrift-stage",
                                       '"suspend":false')]
    assert order == sorted(order), "README: secret, overlay, staging, wait, resume — in that order"


def test_stage_script_plans_every_model_and_data_file_of_the_paper_preset(tmp_path):
    env = {**os.environ, "SAFEDRIFT_MODEL_DIR": str(tmp_path / "models"), "SAFEDRIFT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, str(STAGING / "stage.py"), "--config", "configs/paper.yaml", "--dry-run"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    # The judge's model is named by the Serve config the study deploys (judge.options.deploy).
    served = yaml.safe_load((REPO / cfg["judge"]["options"]["deploy"]).read_text())
    judge_model = served["applications"][0]["args"]["judge"]["options"]["model"]
    for alias in [*cfg["models"], judge_model, "nllb-200-distilled-600M"]:
        assert f"model {alias}:" in proc.stdout
    assert "data hplt_oasst: 11 file(s)" in proc.stdout  # the ten siblings too
    assert importlib.util.find_spec("huggingface_hub") is not None


def _stage_module():
    spec = importlib.util.spec_from_file_location("stage", STAGING / "stage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """The hub's two calls the script makes, served from folders (the hub is not reachable here); which
    files a pattern selects is huggingface_hub's own filter, as in snapshot_download."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    hub = tmp_path / "hub"

    def list_repo_files(repo_id: str) -> list[str]:
        return sorted(str(p.relative_to(hub / repo_id)) for p in (hub / repo_id).rglob("*") if p.is_file())

    def snapshot_download(repo_id: str, local_dir, allow_patterns) -> str:
        for rel in filter_repo_objects(list_repo_files(repo_id), allow_patterns=allow_patterns):
            (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hub / repo_id / rel, Path(local_dir) / rel)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    def repo(repo_id: str, files: dict[str, str]) -> None:
        for rel, text in files.items():
            (hub / repo_id / rel).parent.mkdir(parents=True, exist_ok=True)
            (hub / repo_id / rel).write_text(text)
    return repo


def test_a_repo_that_ships_only_bin_weights_is_staged_with_them(local_hub, tmp_path):
    """Issue #29, point 5: NLLB-200-distilled-600M ships pytorch_model.bin and no safetensors."""
    stage = _stage_module()
    local_hub("facebook/nllb-200-distilled-600M", {"config.json": "{}", "pytorch_model.bin": "w",
                                                    "sentencepiece.bpe.model": "s", "tokenizer_config.json": "{}"})
    target = tmp_path / "models" / "nllb-200-distilled-600M"
    assert stage.stage_model("nllb-200-distilled-600M", "facebook/nllb-200-distilled-600M", target, False) is None
    assert (target / "pytorch_model.bin").exists() and (target / "sentencepiece.bpe.model").exists()
    # A repo with both formats: only safetensors is fetched.
    local_hub("org/both", {"config.json": "{}", "model.safetensors": "w", "pytorch_model.bin": "w"})
    stage.stage_model("both", "org/both", tmp_path / "models" / "both", False)
    assert sorted(p.name for p in (tmp_path / "models" / "both").iterdir()) == ["config.json", "model.safetensors"]


def test_a_folder_without_its_weights_is_not_staged(local_hub, tmp_path, capsys):
    stage = _stage_module()
    target = tmp_path / "models" / "m"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # an interrupted earlier run
    local_hub("org/m", {"config.json": "{}", "model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}),
        "model-00001-of-00002.safetensors": "w"})  # a shard the hub copy lacks: the index still names it
    problem = stage.stage_model("m", "org/m", target, False)
    assert "already staged" not in capsys.readouterr().out
    assert problem == "weight shard(s) missing: model-00002-of-00002.safetensors"


def test_a_judge_model_without_a_chat_template_is_named(tmp_path):
    stage = _stage_module()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    assert "[INST]" in stage.chat_template_problem(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ '[INST]' }}"}))
    assert stage.chat_template_problem(tmp_path) is None


def _preflight_module():
    sys.path.insert(0, str(STAGING))  # preflight.py imports stage.py beside it, as in the pod
    try:
        spec = importlib.util.spec_from_file_location("preflight", STAGING / "preflight.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(STAGING))
    return module


def test_preflight_names_an_old_driver_and_a_missing_one():
    """Issue #29, point 7: torch 2.14.0 and vLLM 0.33.0 from PyPI are CUDA 13 builds (driver >= 580)."""
    pf = _preflight_module()
    assert "driver to 580 or newer" in pf.driver_problem((12, 8), "13.0")
    assert pf.driver_problem((13, 0), "13.0") is None and pf.driver_problem((13, 1), "13.0") is None
    assert "no NVIDIA driver is visible" in pf.driver_problem(None, "13.0")
    assert "CPU build" in pf.driver_problem((13, 0), None)
    assert pf.driver_cuda() is None  # this machine has no driver: the check says so rather than guessing


def test_preflight_names_an_unwritable_volume_and_unstaged_weights(tmp_path):
    """Issue #29, point 6: NFS, CephFS and Filestore ignore fsGroup; and a folder with only config.json."""
    pf = _preflight_module()
    (tmp_path / "file").write_text("")
    assert "ignore the pods' fsGroup" in pf.volume_problem(tmp_path / "file")  # not a writable directory
    assert pf.volume_problem(tmp_path) is None
    models = tmp_path / "models"
    (models / "nllb-200-distilled-600M").mkdir(parents=True)
    (models / "nllb-200-distilled-600M" / "config.json").write_text("{}")
    env = {**os.environ, "SAFEDRIFT_MODEL_DIR": str(models), "SAFEDRIFT_WORKDIR": str(tmp_path / "file")}
    proc = subprocess.run([sys.executable, str(STAGING / "preflight.py"), "--config", "configs/paper.yaml", "--no-gpu"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "ignore the pods' fsGroup" in proc.stderr
    assert "model nllb-200-distilled-600M" in proc.stderr and "no weights" in proc.stderr


def test_preflight_job_runs_on_a_gpu_without_the_hub_token():
    objs = render(STAGING)
    assert not pod_security_problems(objs)
    (label, labels, spec), = [t for t in pod_templates(objs) if t[0].startswith("Job/safedrift-preflight")]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and not _secret_refs(spec)
    assert container["command"][:2] == ["python", "/stage/preflight.py"]
    assert one(objs, "ConfigMap", "safedrift-stage-script")["data"]["preflight.py"] == (STAGING / "preflight.py").read_text()


@pytest.fixture(autouse=True)
def _kustomize(request):
    if "local_hub" not in request.fixturenames and not any(k in request.node.name for k in ("chat_template", "driver",
                                                                                          "unwritable")):
        render(STAGING)  # skips (or fails under CI) without kustomize, like the other infra tests
