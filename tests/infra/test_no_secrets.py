"""No literal secrets in the infrastructure files: passwords, tokens and keys come from Kubernetes
Secrets (secretKeyRef) or files, created by hand (infra/README.md), never from the repository."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from infra_support import INFRA, OVERLAYS, REPO, render

SCANNED = sorted(
    [p for p in INFRA.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".sh", ".py", ".md"}]
    + [REPO / "cluster" / "cluster-launcher.yaml"]
    + [p for p in (REPO / "docker").iterdir() if p.is_file()]
)

SECRET_NAME = (
    r"(?:password|passwd|pwd|token|secret|secret[_-]?access[_-]?key|access[_-]?key(?:[_-]?id)?|api[_-]?key)"
)
# `NAME: value`, `NAME=value`, `--NAME value`, in YAML, shell, env files and URIs.
# The name must end with the secret word: `max_new_tokens` and `..._TOKEN_FILE` (a path) are fine.
ASSIGNMENT = re.compile(
    rf"(?i)(?P<name>[\w.-]*{SECRET_NAME})(?![\w-])\s*(?:[:=]|\s)\s*[\"']?(?P<value>[^\s\"',}}]+)"
)
# A Kubernetes env entry over two lines: `- name: POSTGRES_PASSWORD` then `value: ...`.
ENV_PAIR = re.compile(
    rf"(?im)^\s*-?\s*name:\s*[\"']?(?P<name>[\w.-]*{SECRET_NAME})[\"']?\s*\n\s*value:\s*[\"']?(?P<value>[^\s\"']+)"
)
URI_CREDENTIALS = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s/:@]+:(?P<value>[^\s@/]+)@")
KNOWN_KEYS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face tokens
]


def _is_placeholder(value: str) -> bool:
    """References and placeholders, not secrets: $(VAR), ${VAR}, $VAR, "$(openssl ...)", <...>, names."""
    v = value.strip("\"'")
    if (
        not re.search(r"[A-Za-z0-9]", v)
        or v.startswith(("$", "<", "{", "["))
        or v in {"true", "false", "null"}
    ):
        return True
    # Key names and Secret/ConfigMap names (token, password, safedrift-judge, access-key-id).
    if re.fullmatch(r"[a-z][a-z0-9_.-]*", v) and len(v) < 40:
        return True
    # Environment variable names and descriptive text.
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", v))


def find_secrets(text: str) -> list[str]:
    hits = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for m in ASSIGNMENT.finditer(line):
            if not _is_placeholder(m.group("value")):
                hits.append(f"{lineno}: {m.group('name')} = {m.group('value')[:4]}...")
        for m in URI_CREDENTIALS.finditer(line):
            # In a URI only a reference ($(VAR), ${VAR}, <placeholder>) is acceptable.
            if not m.group("value").startswith(("$", "<", "{")):
                hits.append(f"{lineno}: credentials in a URI")
        for pattern in KNOWN_KEYS:
            if pattern.search(line):
                hits.append(f"{lineno}: looks like a key ({pattern.pattern[:20]})")
    for m in ENV_PAIR.finditer(text):
        if not _is_placeholder(m.group("value")) or m.group("value").islower():
            hits.append(f"env {m.group('name')} has a literal value")
    return hits


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: str(Path(p).relative_to(REPO)))
def test_no_literal_secrets_in_files(path):
    if path.name == "test_no_secrets.py":
        return
    hits = find_secrets(path.read_text())
    assert not hits, f"{path.relative_to(REPO)} holds what looks like a secret:\n" + "\n".join(hits)


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_literal_secrets_in_rendered_manifests(name):
    objs = copy.deepcopy(render(INFRA / "overlays" / name))
    for obj in objs:
        # The embedded Serve config is a YAML string: scan its values, not its comments (which the
        # file scan above skips in serving/judge.yaml too).
        if obj["kind"] == "RayService":
            obj["spec"]["serveConfigV2"] = yaml.safe_load(obj["spec"]["serveConfigV2"])
    assert not find_secrets(yaml.dump_all(objs, Dumper=_BlockDumper))


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (a script in a ConfigMap) as literal blocks: one line of output per line of
    the file, so the scan sees the same lines (and skips the same comments) as in the file itself."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


@pytest.mark.parametrize(
    "bad",
    [
        "env:\n  - name: POSTGRES_PASSWORD\n    value: hunter2-prod\n",
        "stringData:\n  token: 3f9a1c7e55b04d2e9c1f\n",
        "--backend-store-uri=postgresql://mlflow:s3cr3tpw@db:5432/mlflow\n",
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        "aws_access_key_id: AKIAIOSFODNN7EXAMPLE\n",
        "SAFEDRIFT_JUDGE_TOKEN=Zx81-kk29-aa01\n",
    ],
)
def test_scanner_flags_literal_secrets(bad):
    # The scan above must be able to fail.
    assert find_secrets(bad)


@pytest.mark.parametrize(
    "good",
    [
        "valueFrom: {secretKeyRef: {name: safedrift-postgres, key: password}}\n",
        "--backend-store-uri=postgresql://$(MLFLOW_DB_USER):$(MLFLOW_DB_PASSWORD)@$(MLFLOW_DB_HOST):5432/x\n",
        '--from-literal=token="$(openssl rand -hex 32)"\n',
        '--from-literal=secret-access-key="$AWS_SECRET_ACCESS_KEY"\n',
    ],
)
def test_scanner_accepts_references(good):
    assert not find_secrets(good)
