"""Stage a preset's models and the data mirror onto the shared volume, once, before the sweep: hub models
(gated ones with the hub token, which only this Job's pod carries) into $SAFEDRIFT_MODEL_DIR/<alias>,
NLLB into $SAFEDRIFT_MODEL_DIR/<its name>, every registered data set (all of its files) into
$SAFEDRIFT_DATA_DIR, each checked against the registry's sha256. Idempotent: what is there is kept.

    python stage.py --config /config/paper.yaml          # inside the model-staging Job (infra/staging)
    python stage.py --config configs/paper.yaml --dry-run # what it would fetch, from anywhere"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.layout import data_dir, model_dir_root
from pipelines.plan import served_judge
from pipelines.presets import load_config
from pipelines.registries import datasets
from pipelines.registries.models import model_spec

HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


def hub_models(cfg) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Folder name under SAFEDRIFT_MODEL_DIR -> hub id, for every hub model the study loads (the judge's
    too when the study deploys the judge service: its Serve config names the model)."""
    cfg, _ = served_judge(cfg)
    out = {a: model_spec(a).hub_id for a in cfg.models if model_spec(a).source == "hub"}
    judge_model = cfg.judge.options.get("model")
    if isinstance(judge_model, str) and model_spec(judge_model).source == "hub":
        out[judge_model] = model_spec(judge_model).hub_id
    if "nllb" in [*cfg.translate.prefer, *cfg.judge.translate_prefer]:
        hub_id = dict(cfg.translate.options.get("nllb", {})).get("model") or "facebook/nllb-200-distilled-600M"
        out[hub_id.rsplit("/", 1)[-1]] = hub_id
    return {k: v for k, v in out.items() if v}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    root = model_dir_root()
    if root is None:
        print("stage: SAFEDRIFT_MODEL_DIR is not set", file=sys.stderr)
        return 2
    models = hub_models(cfg)
    for name, hub_id in models.items():
        target = root / name
        if (target / "config.json").exists():
            print(f"model {name}: already staged")
            continue
        print(f"model {name}: {hub_id} -> {target}")
        if not args.dry_run:
            from huggingface_hub import snapshot_download

            # huggingface_hub reads HF_TOKEN (the safedrift-hub Secret) itself; nothing here prints it.
            snapshot_download(hub_id, local_dir=target, allow_patterns=HUB_PATTERNS)
    for name in datasets.DATASETS.names():
        spec = datasets.DATASETS.get(name)
        files = datasets.files_of(spec)
        print(f"data {name}: {len(files)} file(s) -> {data_dir() / Path(spec.path).parent}")
        if not args.dry_run:
            datasets.fetch_files(spec, data_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
