"""The hardening of the rendered manifests (issue #19, point 7): network policies evaluated flow by flow,
pod security contexts, which pod sees which credential, the judge's tokens as a rotatable Secret volume,
MLflow behind its login, TLS for the judge. Each rule is a function returning the problems it finds;
the tests assert none in every overlay, and that taking the property out (a mutated copy) is found.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from infra_support import INFRA, by_kind, one, pod_templates, ray_cluster_specs, render
from netpol import Endpoint, can_connect, outside

RAY_NODES = ("ray-head", "ray-worker-cpu", "ray-worker-gpu")
STUDY_CLUSTERS = ("safedrift-sweep", "safedrift-cluster")  # log to MLflow; the judge does not
# Ports a Ray node listens on: GCS, serve, metrics, dashboard, client, worker range, dashboard agent.
RAY_PORTS = (6379, 8000, 8080, 8265, 10001, 10002, 19999, 52365)
# Where things outside the namespace come from.
INGRESS_CONTROLLER = Endpoint("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")
OPERATOR = Endpoint("kuberay-operator", {"app.kubernetes.io/name": "kuberay-operator"}, "ray-system")
OTHER_NS_POD = Endpoint("pod in namespace default", {"app": "anything"}, "default")
UNLABELLED = Endpoint("unlabelled pod in safedrift", {"run": "debug"})
JUDGE_CLIENT = Endpoint("labelled judge client", {"safedrift.io/judge-client": "true"})
DNS = Endpoint("kube-dns", {"k8s-app": "kube-dns"}, "kube-system")
PUBLIC = outside("huggingface.co", "18.239.50.16")
METADATA = outside("cloud metadata", "169.254.169.254")
PRIVATE = outside("a VPC service", "10.20.30.40")


def policies(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return by_kind(objs, "NetworkPolicy")


def pods(objs: list[dict[str, Any]]) -> list[Endpoint]:
    return [Endpoint(label, labels) for label, labels, _ in pod_templates(objs)]


def _is(
    ep: Endpoint, part_of: str | tuple[str, ...] | None = None, component: str | tuple[str, ...] | None = None
) -> bool:
    def match(value: str | None, want: str | tuple[str, ...] | None) -> bool:
        return want is None or value in ((want,) if isinstance(want, str) else want)

    return (
        ep.is_pod
        and ep.namespace == "safedrift"
        and match(ep.labels.get("app.kubernetes.io/part-of"), part_of)
        and match(ep.labels.get("app.kubernetes.io/component"), component)
    )


# --- network -------------------------------------------------------------------------------------------


def network_problems(objs: list[dict[str, Any]]) -> list[str]:
    pols, ours = policies(objs), pods(objs)
    problems: list[str] = []

    def expect(src: Endpoint, dst: Endpoint, port: int, allowed: bool, proto: str = "TCP") -> None:
        if can_connect(pols, src, dst, port, proto) != allowed:
            problems.append(
                f"{src.name} -> {dst.name}:{port}/{proto} should be {'open' if allowed else 'closed'}"
            )

    if not any(
        p["spec"].get("podSelector") in ({}, None)
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in pols
    ):
        problems.append("no default-deny policy (podSelector {}, Ingress and Egress, no rules)")
    # Default deny in effect: a pod nobody planned for reaches nothing and is reached by nothing.
    for port in (80, 443, 5000, 8000):
        expect(UNLABELLED, PUBLIC, port, False)
        expect(OTHER_NS_POD, UNLABELLED, port, False)
    for ep in [*ours, UNLABELLED]:
        expect(ep, DNS, 53, True, "UDP")
        expect(ep, DNS, 53, True, "TCP")
        expect(ep, Endpoint("kube-system other", {"k8s-app": "metrics-server"}, "kube-system"), 443, False)

    sources = [*ours, INGRESS_CONTROLLER, OPERATOR, OTHER_NS_POD, UNLABELLED, JUDGE_CLIENT]
    for dst in ours:
        for src in sources:
            same_cluster = (
                _is(dst, component=RAY_NODES)
                and _is(src, component=RAY_NODES)
                and src.labels["app.kubernetes.io/part-of"] == dst.labels["app.kubernetes.io/part-of"]
            )
            for port in RAY_PORTS + (5000, 5432):
                allowed = same_cluster
                if _is(dst, "safedrift-judge", RAY_NODES) and port == 8000:
                    # The judge: its serve port, from the Ingress controller and labelled clients only.
                    allowed = allowed or src in (INGRESS_CONTROLLER, JUDGE_CLIENT)
                if _is(dst, component="ray-head") and port == 8265:
                    allowed = (
                        allowed
                        or src == OPERATOR
                        or (
                            _is(src, component="ray-submitter")
                            and src.labels.get("app.kubernetes.io/part-of")
                            == dst.labels["app.kubernetes.io/part-of"]
                        )
                    )
                if _is(dst, component="mlflow") and port == 5000:
                    allowed = _is(src, STUDY_CLUSTERS, RAY_NODES)  # MLflow: the study's Ray pods only
                if _is(dst, component="postgres") and port == 5432:
                    allowed = _is(src, component="mlflow")
                if src.name == dst.name and not same_cluster:
                    continue  # a pod talking to itself is loopback, outside NetworkPolicy
                expect(src, dst, port, allowed)

    for ep in ours:
        study = _is(ep, STUDY_CLUSTERS, RAY_NODES)
        expect(ep, PUBLIC, 443, study or _is(ep, component=("ray-head", "mlflow")))
        expect(ep, METADATA, 80, False)
        expect(ep, PRIVATE, 5432, False)
        if not _is(ep, component=("ray-head", "mlflow")):
            expect(ep, METADATA, 443, False)
            expect(ep, PRIVATE, 443, False)
        if _is(ep, component="ray-head"):
            expect(ep, outside("the API server", "10.96.0.1"), 443, True)  # the autoscaler sidecar
    return problems


def test_network_policies_allow_exactly_the_needed_flows(overlay):
    name, objs = overlay
    problems = network_problems(objs)
    assert not problems, f"{name}:\n" + "\n".join(problems[:40])


def _drop(name: str) -> Callable[[list[dict[str, Any]]], None]:
    def mutate(objs: list[dict[str, Any]]) -> None:
        objs[:] = [o for o in objs if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name)]

    return mutate


def _edit(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[list[dict[str, Any]]], None]:
    def mutate(objs: list[dict[str, Any]]) -> None:
        change(one(objs, "NetworkPolicy", name)["spec"])

    return mutate


def _open_judge_ports(spec: dict[str, Any]) -> None:
    del spec["ingress"][0]["ports"]


def _mlflow_from_everyone(objs: list[dict[str, Any]]) -> None:
    # Both halves, as a real widening would: MLflow's ingress and the Ray pods' egress.
    one(objs, "NetworkPolicy", "safedrift-mlflow")["spec"]["ingress"][0]["from"] = [{"podSelector": {}}]
    one(objs, "NetworkPolicy", "safedrift-ray-study-egress")["spec"]["podSelector"] = {}


def _no_except(spec: dict[str, Any]) -> None:
    del spec["egress"][1]["to"][0]["ipBlock"]["except"]


def _join_clusters(objs: list[dict[str, Any]]) -> None:
    for name in ("safedrift-ray-judge-internal", "safedrift-ray-sweep-internal"):
        spec = one(objs, "NetworkPolicy", name)["spec"]
        spec["ingress"][0]["from"][0]["podSelector"] = {}
        spec["egress"][0]["to"][0]["podSelector"] = {}


@pytest.mark.parametrize(
    "mutate",
    [
        _drop("safedrift-default-deny"),
        _drop("safedrift-allow-dns"),
        _drop("safedrift-ray-sweep-internal"),
        _drop("safedrift-ray-head-control"),
        _drop("safedrift-judge-serve"),
        _drop("safedrift-mlflow"),
        _drop("safedrift-postgres"),
        _edit("safedrift-judge-serve", _open_judge_ports),
        _mlflow_from_everyone,
        _edit("safedrift-ray-study-egress", _no_except),
        _join_clusters,
    ],
    ids=[
        "no-default-deny",
        "no-dns",
        "no-ray-internal",
        "no-operator",
        "judge-closed",
        "mlflow-closed",
        "postgres-open",
        "judge-all-ports",
        "mlflow-from-all",
        "metadata-reachable",
        "clusters-joined",
    ],
)
def test_network_check_finds_a_removed_or_widened_policy(mutate):
    objs = copy.deepcopy(render(INFRA / "overlays" / "gpu"))
    mutate(objs)
    assert network_problems(objs)


# --- pods -----------------------------------------------------------------------------------------------


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_security_problems(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for label, labels, spec in pod_templates(objs):
        psc = spec.get("securityContext", {})
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{label}: pod seccompProfile is not RuntimeDefault")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{label}: {key}")
        if any("hostPath" in v for v in spec.get("volumes", [])):
            problems.append(f"{label}: hostPath volume")
        is_head = labels.get("app.kubernetes.io/component") == "ray-head"
        if not is_head and spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{label}: mounts a service-account token it does not use")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in _containers(spec):
            csc = c.get("securityContext", {})
            where = f"{label}/{c['name']}"
            if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if csc.get("runAsUser", psc.get("runAsUser")) in (0, None):
                problems.append(f"{where}: no non-zero runAsUser")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if csc.get("privileged"):
                problems.append(f"{where}: privileged")
            caps = csc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []) or caps.get("add"):
                problems.append(f"{where}: capabilities not all dropped")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            # Read-only root: /tmp must be a writable emptyDir (Ray's session dir, caches, temp files).
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                problems.append(f"{where}: no emptyDir at /tmp")
    for key, spec in ray_cluster_specs(objs).items():
        csc = spec.get("autoscalerOptions", {}).get("securityContext", {})
        if csc.get("allowPrivilegeEscalation") is not False or "ALL" not in csc.get("capabilities", {}).get(
            "drop", []
        ):
            problems.append(f"{key}: the autoscaler sidecar is not hardened")
    return problems


def test_every_pod_is_hardened(overlay):
    name, objs = overlay
    problems = pod_security_problems(objs)
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_caches_point_into_the_writable_tmp(overlay):
    # With a read-only root, libraries that cache under ~ would fail on first use: safedrift-env moves them.
    _, objs = overlay
    env = one(objs, "ConfigMap", "safedrift-env")["data"]
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TRITON_HOME", "PYTHONPYCACHEPREFIX", "MPLCONFIGDIR"):
        assert env.get(var, "").startswith("/tmp"), f"{var} must point under /tmp"


def _pod_spec(objs: list[dict[str, Any]], label_prefix: str) -> dict[str, Any]:
    return next(spec for label, _, spec in pod_templates(objs) if label.startswith(label_prefix))


@pytest.mark.parametrize(
    ("where", "change"),
    [
        (
            "RayJob/safedrift-sweep/cpu",
            lambda s: s["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
        ),
        ("RayService/safedrift-judge/head", lambda s: s["securityContext"].pop("seccompProfile")),
        (
            "Deployment/safedrift-mlflow",
            lambda s: s["containers"][0]["securityContext"]["capabilities"].pop("drop"),
        ),
        (
            "StatefulSet/safedrift-postgres",
            lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        ),
        ("RayJob/safedrift-sweep/submitter", lambda s: s.update(securityContext={})),
        ("RayCluster/safedrift/cpu", lambda s: s.pop("automountServiceAccountToken")),
        ("RayCluster/safedrift/head", lambda s: s["containers"][0]["volumeMounts"].pop()),
    ],
)
def test_pod_check_finds_a_removed_setting(where, change):
    objs = copy.deepcopy(render(INFRA / "overlays" / "gpu"))
    change(_pod_spec(objs, where))
    assert any(p.startswith(where) for p in pod_security_problems(objs))


# --- credentials ----------------------------------------------------------------------------------------


def _secret_refs(spec: dict[str, Any]) -> set[str]:
    """Names of the Secrets a pod reads, through env, envFrom or volumes."""
    names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for c in _containers(spec):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        names |= {s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s}
    return names


# Which pods may read each Secret (by the label pod_templates gives them).
WHO_MAY_READ = {
    "safedrift-s3": lambda lab: lab.startswith("Deployment/safedrift-mlflow"),
    "safedrift-mlflow-admin": lambda lab: lab.startswith("Deployment/safedrift-mlflow"),
    "safedrift-postgres": lambda lab: lab.startswith(
        ("Deployment/safedrift-mlflow", "StatefulSet/safedrift-postgres")
    ),
    "safedrift-mlflow-client": lambda lab: (
        lab.startswith(("Deployment/safedrift-mlflow", "RayJob/safedrift-sweep/", "RayCluster/safedrift/"))
        and not lab.endswith("/submitter")
    ),
    "safedrift-judge-tokens": lambda lab: lab.startswith("RayService/safedrift-judge/"),
}
HUB_TOKEN_ENVS = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"}


def credential_problems(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for label, labels, spec in pod_templates(objs):
        for secret in _secret_refs(spec):
            rule = WHO_MAY_READ.get(secret)
            if rule is None:
                problems.append(f"{label}: reads {secret}, which no rule here allows")
            elif not rule(label):
                problems.append(f"{label}: reads {secret} but does not use it")
        envs = {e["name"] for c in _containers(spec) for e in c.get("env", [])}
        # The hub token only on a model-staging Job, if one is ever added (none is deployed today).
        if envs & HUB_TOKEN_ENVS and labels.get("app.kubernetes.io/component") != "model-staging":
            problems.append(f"{label}: carries a Hugging Face token")
        if "SAFEDRIFT_JUDGE_TOKEN" in envs:
            problems.append(f"{label}: the judge token in the environment cannot be rotated; mount it")
        logs_to_mlflow = WHO_MAY_READ["safedrift-mlflow-client"](label) and not label.startswith(
            "Deployment/"
        )
        if logs_to_mlflow and not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= envs:
            problems.append(f"{label}: logs to MLflow but has no MLFLOW_TRACKING_USERNAME/PASSWORD")
    return problems


def test_credentials_only_where_used(overlay):
    name, objs = overlay
    problems = credential_problems(objs)
    assert not problems, f"{name}:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("where", "env"),
    [
        (
            "RayJob/safedrift-sweep/cpu",
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": "safedrift-s3", "key": "access-key-id"}},
            },
        ),
        (
            "RayCluster/safedrift/head",
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "safedrift-judge-tokens", "key": "team-a"}}},
        ),
        (
            "RayService/safedrift-judge/cpu",
            {
                "name": "U",
                "valueFrom": {"secretKeyRef": {"name": "safedrift-mlflow-client", "key": "username"}},
            },
        ),
        (
            "RayJob/safedrift-sweep/head",
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "safedrift-hub", "key": "token"}}},
        ),
        (
            "RayService/safedrift-judge/head",
            {
                "name": "SAFEDRIFT_JUDGE_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "safedrift-judge-tokens", "key": "team-a"}},
            },
        ),
    ],
)
def test_credential_check_finds_a_misplaced_secret(where, env):
    objs = copy.deepcopy(render(INFRA / "overlays" / "gpu"))
    _pod_spec(objs, where)["containers"][0].setdefault("env", []).append(env)
    assert any(p.startswith(where) for p in credential_problems(objs))


# --- judge tokens: a Secret volume the serving side reads as a directory -----------------------------


def judge_token_problems(objs: list[dict[str, Any]]) -> list[str]:
    from serving.auth import TOKENS_DIR_ENV  # the name the judge's replicas read (serving/auth.py)

    problems = []
    for label, _, spec in pod_templates(objs):
        if not label.startswith("RayService/safedrift-judge/"):
            continue
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        c = spec["containers"][0]
        env = {e["name"]: e for e in c.get("env", [])}
        if TOKENS_DIR_ENV not in env or "value" not in env[TOKENS_DIR_ENV]:
            problems.append(f"{label}: no {TOKENS_DIR_ENV}")
            continue
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == env[TOKENS_DIR_ENV]["value"]]
        if not mounts:
            problems.append(f"{label}: {TOKENS_DIR_ENV} names no mounted directory")
            continue
        m = mounts[0]
        if volumes.get(m["name"], {}).get("secret", {}).get("secretName") != "safedrift-judge-tokens":
            problems.append(f"{label}: {m['mountPath']} is not the Secret safedrift-judge-tokens")
        if "subPath" in m or "subPathExpr" in m:
            problems.append(f"{label}: a subPath mount is never updated, so rotation would not reach it")
        if m.get("readOnly") is not True:
            problems.append(f"{label}: the token mount is writable")
        mode = volumes.get(m["name"], {}).get("secret", {}).get("defaultMode", 0o644)
        if mode & 0o007:
            problems.append(f"{label}: token files readable by others (mode {mode:o})")
    return problems


def test_judge_tokens_are_a_rotatable_secret_volume(overlay):
    name, objs = overlay
    problems = judge_token_problems(objs)
    assert not problems, f"{name}:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["containers"][0]["volumeMounts"][-1].update(subPath="team-a"),
        lambda s: s["containers"][0].update(env=[]),
        lambda s: s["volumes"][-1]["secret"].update(defaultMode=0o644),
    ],
    ids=["subPath", "no-env", "world-readable"],
)
def test_judge_token_check_finds_a_broken_mount(change):
    objs = copy.deepcopy(render(INFRA / "overlays" / "gpu"))
    change(_pod_spec(objs, "RayService/safedrift-judge/cpu"))
    assert judge_token_problems(objs)


# --- MLflow login and the judge's TLS -----------------------------------------------------------------


def test_mlflow_runs_behind_its_login(overlay):
    _, objs = overlay
    spec = one(objs, "Deployment", "safedrift-mlflow")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    script = INFRA / "base" / "mlflow" / "start-mlflow.sh"
    # The container runs the start script from the ConfigMap, and that ConfigMap holds this very file.
    (mount,) = [m for m in c["volumeMounts"] if c["command"][-1].startswith(m["mountPath"] + "/")]
    (vol,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    data = one(objs, "ConfigMap", vol["configMap"]["name"])["data"]
    assert data[c["command"][-1].rsplit("/", 1)[1]] == script.read_text()
    assert re.search(r"^exec mlflow server --app-name basic-auth ", script.read_text(), re.M)
    env = {e["name"]: e for e in c["env"]}
    for var in (
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_CLIENT_USERNAME",
        "MLFLOW_CLIENT_PASSWORD",
    ):
        assert "secretKeyRef" in env[var]["valueFrom"], f"{var} must come from a Secret"
    # The rendered auth config holds the database URI: it must land on a memory-backed volume.
    path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    (cfg_mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (cfg_vol,) = [v for v in spec["volumes"] if v["name"] == cfg_mount["name"]]
    assert cfg_vol.get("emptyDir", {}).get("medium") == "Memory"


def test_judge_has_a_tls_ingress_to_its_serve_service(overlay):
    _, objs = overlay
    ing = one(objs, "Ingress", "safedrift-judge")
    spec, notes = ing["spec"], ing["metadata"].get("annotations", {})
    hosts = {h for t in spec["tls"] for h in t["hosts"]}
    assert all(t.get("secretName") for t in spec["tls"]), "TLS without a certificate Secret"
    assert {r["host"] for r in spec["rules"]} <= hosts, "a host served without TLS"
    backends = {
        (p["backend"]["service"]["name"], p["backend"]["service"]["port"]["number"])
        for r in spec["rules"]
        for p in r["http"]["paths"]
    }
    # KubeRay names the RayService's Serve Service <name>-serve-svc.
    svc = one(objs, "RayService")["metadata"]["name"] + "-serve-svc"
    assert backends == {(svc, 8000)}
    assert notes.get("nginx.ingress.kubernetes.io/force-ssl-redirect") == "true"
    assert any(k.startswith("cert-manager.io/") for k in notes), (
        "no cert-manager issuer: who renews the certificate?"
    )
    serve = yaml.safe_load(one(objs, "RayService")["spec"]["serveConfigV2"])
    assert serve["http_options"]["port"] == 8000
    readme = (INFRA / "README.md").read_text()
    assert "**TLS.**" in readme and "cert-manager" in readme
