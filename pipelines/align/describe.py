"""What the report says about an aligned base: one plain sentence, and its provenance from the manifest."""

from __future__ import annotations

from typing import Any

from cluster.storage import read_manifest
from pipelines.align.build import AlignedBuild
from pipelines.registries.models import model_spec


def describe(manifest: dict[str, Any]) -> str:
    """One plain sentence for the report: that the base was aligned here, and how."""
    r, rows, train = manifest["recipe"], manifest["data"]["rows"], manifest["train"]
    benign = " + ".join(f"{n} {s}" for s, n in zip(r["benign"], r["n_benign"], strict=True))
    seen = min(r["steps"] * r["batch_size"], train["examples"])
    return (f"The base model {manifest['alias']} was aligned locally, not by its publisher: "
            f"{manifest['base']['alias']} with a LoRA (r={r['lora_r']}, alpha={r['lora_alpha']}, "
            f"{len(r['targets'])} linear layers per block, lr {r['lr']:g}, seed {r['seed']}) merged in after "
            f"{r['steps']} steps of {r['batch_size']} examples ({seen} of a shuffled pool of {train['examples']}): "
            f"{len(rows['harmful'])} English {'/'.join(r['harmful'])} prompts answered with "
            f"{len(manifest['refusals'])} short refusal templates, Alpaca answers ({benign} rows from the end of "
            f"each set, disjoint from the study's) and {r['n_lookalike']} risky-looking "
            "benign prompts answered by the base model itself. Refusals were taught in English only; "
            "MultiJail, the eval set, was not used.")


def aligned_provenance(alias: str) -> dict[str, Any] | None:
    """The provenance of an aligned base already in the model store (None if it is not built): recipe, data
    sources with sha256, training figures and build checks."""
    path = AlignedBuild(model_spec(alias)).path()
    m = read_manifest(path, verify=False)
    if m is None:
        return None
    return {"dir": path.name, "statement": describe(m), "base": m["base"], "recipe": m["recipe"],
            "sources": m["data"]["sources"], "rows": {k: len(v) for k, v in m["data"]["rows"].items()},
            "refusals_sha256": m["data"]["refusals_sha256"], "lookalikes_sha256": m["data"]["lookalikes_sha256"],
            "train": m["train"], "check": m["check"]}
