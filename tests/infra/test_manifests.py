"""Render every overlay and validate what Kubernetes and KubeRay would be given.

Core objects are validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an
unknown field fails, as `kubectl apply --validate=strict` would). RayCluster/RayJob/RayService are
validated against the KubeRay CRDs in ../shared/schemas/kuberay, made strict the same way (a CRD
schema alone would let the API server silently prune a misspelt field such as
`shutdownAfterJobFinish`). Then the study's own rules: head without GPU and num-cpus 0, autoscaling
bounds, one image per Ray cluster, references to ConfigMaps/PVCs/Secrets that exist.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from infra_support import (
    INFRA,
    K8S_VERSION,
    KUBERAY_KINDS,
    REPO,
    SCHEMAS,
    by_kind,
    missing_tool,
    one,
    pod_specs,
    ray_cluster_specs,
    render,
)

CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
CPU_IMAGE = re.compile(r"/safedrift-cpu:[\w.-]+$")
CUDA_IMAGE = re.compile(r"/safedrift-cuda:[\w.-]+$")


def _strict(schema: Any) -> Any:
    """Copy of an OpenAPI schema where objects with declared properties reject unknown ones."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    path = SCHEMAS / "kuberay" / CRD_FILES[kind]
    if not path.exists():
        missing_tool(f"KubeRay CRD schema {path} not found (shared/schemas beside the repo)")
    # libyaml's loader: the three CRDs are 3.3 MB of YAML (about 12 s with the pure-Python loader).
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(v1["schema"]["openAPIV3Schema"])


def crd_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(crd_schema(obj["kind"]))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def test_every_overlay_renders_the_whole_stack(overlay):
    name, objs = overlay
    kinds = sorted(o["kind"] for o in objs)
    for kind in ("RayCluster", "RayJob", "RayService", "Deployment", "StatefulSet", "ConfigMap", "Service"):
        assert kind in kinds, f"{name}: no {kind} rendered"
    assert all(o["metadata"].get("namespace") == "safedrift" for o in objs), f"{name}: namespace not set"


def test_core_objects_validate_against_kubernetes_schemas(overlay):
    name, objs = overlay
    core = [o for o in objs if o["kind"] not in KUBERAY_KINDS]
    assert core
    for obj in core:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for k8s {K8S_VERSION}: {exc}"
            )


def test_kuberay_objects_validate_against_crds(overlay):
    name, objs = overlay
    ray_objs = [o for o in objs if o["kind"] in KUBERAY_KINDS]
    assert {o["kind"] for o in ray_objs} == KUBERAY_KINDS
    for obj in ray_objs:
        assert obj["apiVersion"] == "ray.io/v1"
        errors = crd_errors(obj)
        assert not errors, f"{name}: {obj['kind']}/{obj['metadata']['name']}:\n" + "\n".join(errors)


def test_strict_crd_validation_catches_a_misspelt_field():
    # The check above must be able to fail: a typo that the API server would prune silently.
    objs = render(INFRA / "overlays" / "gpu")
    job = copy.deepcopy(one(objs, "RayJob"))
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in crd_errors(job))
    job = copy.deepcopy(one(objs, "RayJob"))
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert crd_errors(job)


def test_head_has_no_gpu_and_no_cpus_for_work(overlay):
    name, objs = overlay
    for key, spec in ray_cluster_specs(objs).items():
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", f"{name} {key}: head must have num-cpus 0"
        for c in head["template"]["spec"]["containers"]:
            for section in ("requests", "limits"):
                assert "nvidia.com/gpu" not in c.get("resources", {}).get(section, {}), (
                    f"{name} {key}: GPU on head"
                )


def test_autoscaling_bounds(overlay):
    name, objs = overlay
    for key, spec in ray_cluster_specs(objs).items():
        assert spec.get("enableInTreeAutoscaling") is True, f"{name} {key}: autoscaling off"
        assert spec.get("authOptions", {}).get("mode") == "token", f"{name} {key}: Ray token auth off"
        assert spec["rayVersion"] == "2.60.0"
        groups = spec["workerGroupSpecs"]
        assert any(g["groupName"] == "cpu" for g in groups), f"{name} {key}: no CPU worker group"
        for g in groups:
            assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], (
                name,
                key,
                g["groupName"],
            )
            assert g["maxReplicas"] >= 1


def _ray_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_one_image_per_ray_cluster_and_the_right_one(overlay):
    # A Ray cluster needs one Python environment on every node: head and workers share the image.
    name, objs = overlay
    expected = CPU_IMAGE if name == "cpu-test" else CUDA_IMAGE
    for key, spec in ray_cluster_specs(objs).items():
        images = {c["image"] for c in _ray_containers(spec)}
        assert len(images) == 1, f"{name} {key}: several images {images}"
        assert expected.search(images.pop()), f"{name} {key}: wrong image family"
    mlflow = one(objs, "Deployment", "safedrift-mlflow")
    assert CPU_IMAGE.search(mlflow["spec"]["template"]["spec"]["containers"][0]["image"])


def _gpu_groups(spec):
    return [
        g
        for g in spec["workerGroupSpecs"]
        if any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
            for c in g["template"]["spec"]["containers"]
        )
    ]


def test_cpu_test_overlay_is_cpu_only_and_small():
    objs = render(INFRA / "overlays" / "cpu-test")
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(objs)
    for key, spec in ray_cluster_specs(objs).items():
        assert not _gpu_groups(spec), key
        for c in _ray_containers(spec):
            assert int(str(c["resources"]["limits"]["cpu"])) <= 2, f"{key}: cpu-test should be small"
    job = one(objs, "RayJob")
    assert "/config/smoke.yaml" in job["spec"]["entrypoint"]


def test_gpu_overlay_has_gpu_workers_with_tolerations():
    objs = render(INFRA / "overlays" / "gpu")
    for key, spec in ray_cluster_specs(objs).items():
        groups = _gpu_groups(spec)
        assert groups, f"{key}: no GPU worker group"
        for g in groups:
            assert g["minReplicas"] == 0, f"{key}: GPU workers should scale from zero"
            tolerations = g["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{key}: no GPU toleration"
    assert "/config/paper.yaml" in one(objs, "RayJob")["spec"]["entrypoint"]


def test_rayjob_lifecycle_fields(overlay):
    name, objs = overlay
    spec = one(objs, "RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["entrypoint"].startswith("safedrift run --config /config/")
    assert "clusterSelector" not in spec, "shutdownAfterJobFinishes only applies to a cluster the job creates"


def test_shared_storage(overlay):
    name, objs = overlay
    env = one(objs, "ConfigMap", "safedrift-env")["data"]
    pvcs = {p["metadata"]["name"]: p for p in by_kind(objs, "PersistentVolumeClaim")}
    # Every stage reads and writes the workdir with local tools, on every node: it must be one RWX volume.
    assert env["SAFEDRIFT_WORKDIR"] == "/mnt/safedrift"
    assert pvcs["safedrift-shared"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for label, pod in pod_specs(objs):
        if "safedrift-postgres" in label or "safedrift-mlflow" in label:
            continue
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/mnt/safedrift" in mounts, f"{name} {label}: workdir not mounted"
        assert "/config" in mounts, f"{name} {label}: study config not mounted"


def test_references_resolve(overlay):
    # Every ConfigMap/PVC a pod uses is rendered in the same overlay; Secrets are created by hand,
    # so each (secret, key) referenced must be one that infra/README.md tells you to create.
    name, objs = overlay
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind(objs, "ConfigMap")}
    pvcs = {o["metadata"]["name"] for o in by_kind(objs, "PersistentVolumeClaim")}
    documented = documented_secret_keys()
    for label, pod in pod_specs(objs):
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, f"{name} {label}: {vol}"
            if "secret" in vol:
                secret = vol["secret"]["secretName"]
                assert any(s == secret for s, _ in documented), (
                    f"{name} {label}: secret volume {secret} is not created in infra/README.md"
                )
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in pvcs, f"{name} {label}: {vol}"
        for c in pod["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps, f"{name} {label}"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    assert r["key"] in configmaps.get(r["name"], {}), f"{name} {label}: {e['name']}"
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    assert (r["name"], r["key"]) in documented, (
                        f"{name} {label}: secret {r['name']}/{r['key']} is not created in infra/README.md"
                    )


@functools.cache
def documented_secret_keys() -> frozenset[tuple[str, str]]:
    """(secret, key) pairs created by `kubectl create secret generic NAME --from-literal=KEY=...`."""
    text = (INFRA / "README.md").read_text()
    pairs = set()
    # A command may continue over several lines with backslashes.
    for cmd in re.findall(r"kubectl[^\n]*create secret generic (?:[^\n]*\\\n)*[^\n]*", text):
        cmd = cmd.replace("\\\n", " ")
        secret = re.search(r"create secret generic\s+(\S+)", cmd).group(1)
        for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)=", cmd):
            pairs.add((secret, key))
    return frozenset(pairs)


def test_readme_documents_the_secrets():
    pairs = documented_secret_keys()
    for secret in (
        "safedrift-judge-tokens",
        "safedrift-postgres",
        "safedrift-s3",
        "safedrift-mlflow-admin",
        "safedrift-mlflow-client",
    ):
        assert any(s == secret for s, _ in pairs), f"infra/README.md does not create {secret}"


def test_secrets_are_only_referenced_never_defined(overlay):
    name, objs = overlay
    assert not by_kind(objs, "Secret"), f"{name}: a Secret object in the manifests; create it with kubectl"
    for label, pod in pod_specs(objs):
        for c in pod["containers"]:
            for e in c.get("env", []):
                # *_FILE and *_DIR name paths (a mounted Secret), not the secret itself.
                if re.search(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY", e["name"]) and not e["name"].endswith(
                    ("_FILE", "_DIR")
                ):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), (
                        f"{name} {label}: {e['name']} must come from a Secret"
                    )


def test_mlflow_uses_postgres_and_s3_artifacts(overlay):
    name, objs = overlay
    c = one(objs, "Deployment", "safedrift-mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    # `mlflow server` reads both from its environment (click envvars): no password on a command line.
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri.startswith("postgresql+psycopg2://")
    assert "$(MLFLOW_DB_PASSWORD)" in uri, "the DB password must come from env (a Secret), not the manifest"
    assert "MLFLOW_DB_PASSWORD" in env and env["MLFLOW_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (
        env["MLFLOW_ARTIFACTS_DESTINATION"]["valueFrom"]["configMapKeyRef"]["key"]
        == "MLFLOW_ARTIFACTS_DESTINATION"
    )
    args = " ".join(c["command"] + c["args"])
    assert "--serve-artifacts" in args
    assert "postgresql" not in args and "PASSWORD" not in args
    data = one(objs, "ConfigMap", "safedrift-env")["data"]
    assert data["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert data["MLFLOW_TRACKING_URI"] == "http://safedrift-mlflow:5000"
    svc = one(objs, "Service", "safedrift-mlflow")
    assert svc["spec"]["ports"][0]["port"] == 5000
    pg = one(objs, "StatefulSet", "safedrift-postgres")
    assert pg["spec"]["volumeClaimTemplates"], "PostgreSQL needs persistent storage"


def test_study_configmap_matches_configs():
    # The ConfigMap mounted at /config is a synced copy of configs/: a stale copy would run an old study.
    objs = render(INFRA / "overlays" / "gpu")
    data = one(objs, "ConfigMap", "safedrift-study-config")["data"]
    assert data, "empty study ConfigMap"
    for fname, text in data.items():
        src = REPO / "configs" / fname
        assert src.exists(), f"ConfigMap key {fname} has no configs/{fname}"
        assert yaml.safe_load(text) == yaml.safe_load(src.read_text()), (
            f"infra/base/config/{fname} is stale: run python infra/sync-serve-config.py"
        )
