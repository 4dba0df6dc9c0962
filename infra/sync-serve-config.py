#!/usr/bin/env python3
"""Keep the Kubernetes manifests in step with the files they copy.

1. ``serving/judge.yaml`` (the judge's Ray Serve config) is embedded verbatim as the RayService's
   ``serveConfigV2`` in ``infra/base/rayservice.yaml``: one Serve config for ``serve run`` and KubeRay.
2. ``configs/<preset>.yaml`` are copied to ``infra/base/config/`` for the ConfigMap
   ``safedrift-study-config`` (kustomize will not read files outside the kustomization's folder).

    python infra/sync-serve-config.py           # rewrite what is out of date
    python infra/sync-serve-config.py --check   # exit 1 if anything is out of date (CI, tests)

Only the ``serveConfigV2`` block is rewritten; the rest of rayservice.yaml (comments included) is kept.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO / "serving" / "judge.yaml"
RAYSERVICE = REPO / "infra" / "base" / "rayservice.yaml"
KUSTOMIZATION = REPO / "infra" / "base" / "kustomization.yaml"
STUDY_CONFIG_MAP = "safedrift-study-config"

_KEY = re.compile(r"^(?P<indent>[ ]*)serveConfigV2:")


def embed(manifest: str, serve_config: str) -> str:
    """Return ``manifest`` with its serveConfigV2 block replaced by ``serve_config`` as a literal block."""
    lines = manifest.splitlines()
    found = next(((i, m) for i, line in enumerate(lines) if (m := _KEY.match(line))), None)
    if found is None:
        raise SystemExit(f"{RAYSERVICE}: no 'serveConfigV2:' key to rewrite")
    i, m = found
    indent = len(m.group("indent"))
    end = i + 1
    # The old value: every following line that is blank or indented deeper than the key.
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(" ")) > indent
    ):
        end += 1
    # Blank lines at the end of the old block belong to what follows, not to the value.
    while end > i + 1 and not lines[end - 1].strip():
        end -= 1
    pad = " " * (indent + 2)
    body = [pad + text if text.strip() else "" for text in serve_config.rstrip("\n").splitlines()]
    new = lines[:i] + [" " * indent + "serveConfigV2: |"] + body + lines[end:]
    return "\n".join(new) + "\n"


def study_config_files() -> list[str]:
    """The files of the ConfigMap generator named STUDY_CONFIG_MAP, relative to infra/base."""
    kust = yaml.safe_load(KUSTOMIZATION.read_text())
    for gen in kust.get("configMapGenerator", []):
        if gen.get("name") == STUDY_CONFIG_MAP:
            return [f.split("=", 1)[-1] for f in gen.get("files", [])]
    raise SystemExit(f"{KUSTOMIZATION}: no configMapGenerator named {STUDY_CONFIG_MAP}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, do not write; exit 1 if stale")
    args = parser.parse_args(argv)
    stale: list[str] = []

    if not SERVE_CONFIG.exists():
        print(f"error: {SERVE_CONFIG.relative_to(REPO)} does not exist: nothing to embed", file=sys.stderr)
        return 2
    serve_text = SERVE_CONFIG.read_text()
    parsed = yaml.safe_load(serve_text)
    if not isinstance(parsed, dict) or not parsed.get("applications"):
        print(f"error: {SERVE_CONFIG} is not a Serve config (no 'applications:')", file=sys.stderr)
        return 2
    current = RAYSERVICE.read_text()
    updated = embed(current, serve_text)
    if updated != current:
        stale.append(str(RAYSERVICE.relative_to(REPO)))
        if not args.check:
            RAYSERVICE.write_text(updated)

    base = KUSTOMIZATION.parent
    for rel in study_config_files():
        dst = base / rel
        src = REPO / "configs" / Path(rel).name
        if not src.exists():
            print(
                f"error: {src.relative_to(REPO)} does not exist (listed in {KUSTOMIZATION.name})",
                file=sys.stderr,
            )
            return 2
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            stale.append(str(dst.relative_to(REPO)))
            if not args.check:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())

    verb = "out of date" if args.check else "updated"
    for path in stale:
        print(f"{verb}: {path}")
    if args.check and stale:
        print("run: python infra/sync-serve-config.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
