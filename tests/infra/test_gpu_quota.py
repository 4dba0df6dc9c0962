"""Issue #29, point 9: the paper's RayJob has the GPUs its stages hold at once, and its pods find a
writable HOME for the JIT caches that ignore XDG (the root filesystem is read-only)."""

from __future__ import annotations

import yaml
from infra_support import INFRA, REPO, one, pod_templates, render


def test_the_gpu_group_holds_every_evaluation_worker_beside_the_judge_replicas():
    rayjob = one(render(INFRA / "overlays" / "gpu"), "RayJob")
    groups = {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    per_pod = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    study = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    evaluation = len(study["models"]) * study["evaluate"]["num_gpus"]  # one worker per model, all at once
    served = yaml.safe_load((REPO / study["judge"]["options"]["deploy"]).read_text())["applications"][0]["args"]
    backend = served["backend"]
    replicas = (backend.get("autoscaling") or {}).get("max_replicas") or backend["num_replicas"]
    judge = replicas * backend["ray_actor_options"]["num_gpus"]
    assert gpu["maxReplicas"] * per_pod >= evaluation + judge, (gpu["maxReplicas"], evaluation, judge)


def test_ray_pods_have_a_writable_home():
    objs = render(INFRA / "overlays" / "gpu")
    env = one(objs, "ConfigMap", "safedrift-env")["data"]
    for label, _, spec in pod_templates(objs):
        if "ray" not in label.lower():
            continue
        for c in spec["containers"]:
            if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                continue
            mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
            sources = {e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])}
            home = {e["name"]: e.get("value") for e in c.get("env", [])}.get("HOME") or (
                env.get("HOME") if "safedrift-env" in sources else None)
            assert home and any(home.startswith(m + "/") or home == m for m in mounts), (label, c["name"], home)
    for key in ("CUDA_CACHE_PATH", "TORCHINDUCTOR_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE"):
        assert env[key].startswith("/tmp/"), key


def test_training_waits_for_a_gpu_node_the_autoscaler_adds():
    """The GPU group starts at 0 pods; a new GPU pod takes minutes (scheduling, image pull)."""
    env = one(render(INFRA / "overlays" / "gpu"), "ConfigMap", "safedrift-env")["data"]
    assert float(env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]) >= 900  # Ray Train's default: 60
