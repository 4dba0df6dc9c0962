"""Stage a preset's models and the data mirror onto the shared volume, once, before the sweep: hub models
(gated ones with the hub token, which only this Job's pod carries) into $SAFEDRIFT_MODEL_DIR/<alias>,
NLLB into $SAFEDRIFT_MODEL_DIR/<its name>, every registered data set (all of its files) into
$SAFEDRIFT_DATA_DIR, each checked against the registry's sha256. Idempotent: what is there is kept — a
model folder counts as staged only when its weights are whole, and a judge model must carry its chat
template (SORRY-Bench's judge reads its prompt inside Mistral's [INST] … [/INST]).

    python stage.py --config /config/paper.yaml          # inside the model-staging Job (infra/staging)
    python stage.py --config configs/paper.yaml --dry-run # what it would fetch, from anywhere"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.layout import data_dir, model_dir_root
from pipelines.plan import served_judge
from pipelines.presets import load_config
from pipelines.registries import datasets
from pipelines.registries.models import model_spec

# Config, tokenizer and chat-template files; the weights' format is chosen per repo (weight_patterns).
HUB_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja"]
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_patterns(files: list[str]) -> list[str]:
    """safetensors where the repo has them, else PyTorch's .bin: NLLB-200-distilled-600M ships only
    pytorch_model.bin, and a repo with both would otherwise be fetched twice."""
    if any(f.endswith(".safetensors") for f in files):
        return ["*.safetensors"]
    return ["*.bin"]


def weights_problem(folder: Path) -> str | None:
    """Why `folder` is not a whole model copy (None when it is): its config, and every weight shard its
    index names, or one unsharded weight file."""
    if not (folder / "config.json").exists():
        return "no config.json"
    for index in INDEXES:
        if (folder / index).exists():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).exists()]
            return f"weight shard(s) missing: {', '.join(missing)}" if missing else None
    if (folder / "model.safetensors").exists() or (folder / "pytorch_model.bin").exists():
        return None
    return "no weights (model.safetensors or pytorch_model.bin)"


def chat_template_problem(folder: Path) -> str | None:
    """Why a judge model's folder would format its prompt without the chat template it was trained with."""
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return None
    config = folder / "tokenizer_config.json"
    if config.exists() and json.loads(config.read_text()).get("chat_template"):
        return None
    return ("its tokenizer has no chat template, so the judge prompt would go without [INST] … [/INST]: add "
            "the base model's chat_template (Mistral-7B-Instruct-v0.2's tokenizer_config.json) to "
            f"{config}, or give judge.options.model a folder that has one")


def stage_model(name: str, hub_id: str, target: Path, dry_run: bool) -> str | None:
    """Stages one hub model unless a whole copy is there; returns what is still wrong with it, or None."""
    problem = weights_problem(target)
    if problem is None:
        print(f"model {name}: already staged")
        return None
    print(f"model {name}: {hub_id} -> {target}" + ("" if problem == "no config.json" else f" ({problem})"))
    if dry_run:
        return None
    from huggingface_hub import list_repo_files, snapshot_download

    # huggingface_hub reads HF_TOKEN (the safedrift-hub Secret) itself; nothing here prints it.
    patterns = HUB_PATTERNS + weight_patterns(list_repo_files(hub_id))
    snapshot_download(hub_id, local_dir=target, allow_patterns=patterns)
    return weights_problem(target)


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
    judges = judge_models(cfg)
    problems = []
    for name, hub_id in models.items():
        problem = stage_model(name, hub_id, root / name, args.dry_run)
        if problem is None and name in judges and not args.dry_run:
            problem = chat_template_problem(root / name)
        if problem:
            problems.append(f"model {name} ({hub_id}) in {root / name}: {problem}")
    for name in datasets.DATASETS.names():
        spec = datasets.DATASETS.get(name)
        files = datasets.files_of(spec)
        print(f"data {name}: {len(files)} file(s) -> {data_dir() / Path(spec.path).parent}")
        if not args.dry_run:
            datasets.fetch_files(spec, data_dir())
    for problem in problems:
        print(f"stage: {problem}", file=sys.stderr)
    return 1 if problems else 0


def judge_models(cfg) -> set[str]:  # type: ignore[no-untyped-def]
    """The folder names of the models that judge (their prompt is a chat template's)."""
    cfg, _ = served_judge(cfg)
    names = [cfg.judge.options.get("model"), (cfg.judge.second_options or {}).get("model")]
    return {n for n in names if isinstance(n, str)}


if __name__ == "__main__":
    sys.exit(main())
