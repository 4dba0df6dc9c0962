"""What the report says about where its numbers come from: config and study hashes, models, data sets
with their sha256, the judge and its agreement with human labels, translators with their translation
QA pass rates, seeds and epochs, and the software versions. Built once when the study runs (a JSON
"study context" saved beside the report, so `safedrift report` can redraw it later) and rendered from
there. Credentials never enter it: everything config-derived goes through pipelines.secrets.public_view
(URIs lose their user info, values of secret-named keys are masked)."""

from __future__ import annotations

import platform
import time
from importlib import metadata
from typing import Any

from pipelines.align import aligned_provenance
from pipelines.cells import study_cells
from pipelines.config import deviations
from pipelines.evaluate.judges.labels import labelled_models
from pipelines.registries.datasets import DATASETS, JUDGE_LABEL_SETS
from pipelines.registries.models import MODELS, weights_origin
from pipelines.secrets import public_view, redact_uri

__all__ = ["dataset_info", "minimal_context", "model_info", "qa_pass_rates", "redact", "redact_uri",
           "software_versions", "study_context"]

SOFTWARE = ("torch", "ray", "deepspeed", "transformers", "peft", "mlflow", "polars", "numpy", "matplotlib",
            "pyarrow", "vllm")


def software_versions() -> dict[str, str]:
    """Installed versions (from package metadata: nothing is imported, so this is instant)."""
    out = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":  # the GPU extra: absent on CPU installs, which is not news
                out[name] = "not installed"
    return out


def redact(obj: Any) -> Any:
    """A copy of a config dump with its secrets masked and URIs without credentials (the one public view)."""
    return public_view(obj)


def model_info(alias: str) -> dict[str, Any]:

    if alias not in MODELS:  # same keys either way: the report renders the list as one table
        return {"alias": alias, "source": "unknown", "family": None, "weights": None, "hub_id": None}
    m = MODELS.get(alias)
    info = {"alias": alias, "source": m.source, "family": m.family, "weights": weights_origin(m), "hub_id": m.hub_id}
    if m.source == "aligned":  # recipe, data with sha256, checks: the report says how it was aligned
        info["aligned"] = aligned_provenance(alias)
    return info


def dataset_info(name: str, sha256: str | None = None) -> dict[str, Any]:
    """A data set with its checksum: the one recorded when it was used (the data-set manifest), else the
    registry's."""

    if name in DATASETS:
        d = DATASETS.get(name)
        return {"name": name, "sha256": sha256 or d.sha256, "license": d.license, "url": d.url, "kind": d.kind}
    # A user's file ("file:/p", "sorrybench:/p"): its path is theirs; its checksum is what matters.
    return {"name": name, "sha256": sha256, "license": "user file", "url": "", "kind": "user"}


def qa_pass_rates(ds_manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per split × language: rows, rows QA flagged, rows the QA policy keeps, and the pass rate."""
    out = []
    for split, langs in (ds_manifest.get("qa") or {}).items():
        for lang, t in langs.items():
            rows = int(t.get("rows") or 0)
            kept = int(t.get("kept_by_policy") or 0)
            routes = ds_manifest.get("routes") or {}
            # eval_safe has one route per source: "eval_safe/<lang>/<source>"
            route = routes.get(f"{split}/{lang}") or ", ".join(
                f"{k.rsplit('/', 1)[1]}: {v}" for k, v in routes.items() if k.startswith(f"{split}/{lang}/")) or None
            out.append({"split": split, "lang": lang, "route": route,
                        "rows": rows, "flagged": int(t.get("flagged") or 0), "kept": kept,
                        "pass_rate": kept / rows if rows else None,
                        "unflagged_rate": 1 - int(t.get("flagged") or 0) / rows if rows else None,
                        "chrf_mean": t.get("chrf_mean")})
    return out


def study_context(cfg: Any, study_hash: str, datasets_hash: str, ds_manifest: dict[str, Any] | None,
                  parent_run_id: str | None, tracking_uri: str | None) -> dict[str, Any]:
    """Everything the report needs besides the tidy table, as JSON-ready data."""

    ds_manifest = ds_manifest or {}
    sources = dict(ds_manifest.get("sources") or {})
    used = list(sources)
    ev = cfg.evaluate
    # Data sets the cells read besides the translated ones: WikiText-2 and the judge's labels.
    extra = ["wikitext2"] if ev.ppl_tokens else []
    if cfg.judge.agreement:

        extra += list(JUDGE_LABEL_SETS)
    used += [x for x in extra if x not in used]
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "preset": cfg.name, "config_hash": cfg.digest(), "study_hash": study_hash, "datasets_hash": datasets_hash,
        "models": [model_info(m) for m in cfg.models],
        "ft_langs": list(cfg.ft_langs), "eval_langs": list(cfg.eval_langs),
        "seeds": list(cfg.seeds), "epochs": list(cfg.epochs),
        "expected_cells": [{"cell": c.id, "model": c.model, "ft_lang": c.ft_lang, "seed": c.seed, "epochs": c.epochs}
                           for c in study_cells(cfg)],
        "finetune": {"method": cfg.finetune.method, "lr": cfg.finetune.lr, "lora_r": cfg.finetune.lora.r,
                     "lora_alpha": cfg.finetune.lora.alpha, "zero_stage": cfg.finetune.zero_stage,
                     "generate_temperature": cfg.generate.temperature, "generate_seed": cfg.generate.seed},
        "datasets": [dataset_info(n, sources.get(n)) for n in used],
        "judge": {"name": cfg.judge.name, "back_translate": cfg.judge.back_translate,
                  "options": public_view(dict(cfg.judge.options)),
                  "labelled_models": labelled_models(cfg.judge.labels) if cfg.judge.agreement else []},
        "translators": dict(ds_manifest.get("translator_versions") or {}),
        "routes": dict(ds_manifest.get("routes") or {}),
        "qa": qa_pass_rates(ds_manifest),
        "qa_policy": ds_manifest.get("qa_policy"),
        "software": software_versions(),
        "mlflow": {"tracking_uri": redact_uri(tracking_uri), "parent_run_id": parent_run_id},
        "config": cfg.public(),
        "deviations": deviations(cfg),
    }


def minimal_context(sweep_manifest: dict[str, Any] | None, ds_manifest: dict[str, Any] | None,
                    study_hash: str | None) -> dict[str, Any]:
    """A context for a sweep directory whose config is unknown: what its manifests still tell."""
    sm, dm = sweep_manifest or {}, ds_manifest or {}
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "study_hash": study_hash, "datasets_hash": sm.get("datasets"),
        "eval_langs": list(dm.get("eval_langs") or []), "ft_langs": list(dm.get("ft_langs") or []),
        "datasets": [dataset_info(n, s) for n, s in (dm.get("sources") or {}).items()],
        "translators": dict(dm.get("translator_versions") or {}), "routes": dict(dm.get("routes") or {}),
        "qa": qa_pass_rates(dm), "qa_policy": dm.get("qa_policy"),
        "software": software_versions(),
        "mlflow": {"tracking_uri": redact_uri(sm.get("tracking_uri")), "parent_run_id": sm.get("parent_run_id")},
        "expected_cell_ids": list(sm.get("cells") or []),
    }
