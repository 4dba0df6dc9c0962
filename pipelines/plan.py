"""`safedrift plan`: the dry run. Loads no model, translates nothing, starts no Ray. From the config and
the registries alone it lists the cells, every split x language with its row count and route, the
back-translation routes, the judge, each stage's resources, the cluster it needs and an estimate of
GPU-hours, and it names, with the fix, everything that would fail later (a gated model with neither
weights nor token, an empty split, a missing route, a cell no node can hold).

The GPU-hours estimate rests on measured figures (the H100 LoRA step, benchmarks/gpu/RESULTS.md; the
device check's JSON once recorded) and on assumptions stated as such in ASSUMED; every figure is in the
output with its source, and the total is given both busy and held (what a cluster bills)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.cells import study_cells
from pipelines.config import StudyConfig, deviations
from pipelines.errors import ClusterTooSmallError, SafedriftError
from pipelines.evaluate.judges import JUDGES
from pipelines.layout import repo_path
from pipelines.registries.models import MODELS, hub_facts, hub_local_dir, model_spec
from pipelines.sweep.resources import (
    Capacity,
    CellNeeds,
    NodeShape,
    check_evaluation_fits,
    evaluation_needs,
    worker_slots,
)
from pipelines.translate.plan import plan_jobs
from pipelines.translate.translators import TRANSLATORS, make_translator, plan_route, route_name

# Measured: LoRA r=8 on Llama-3.2-1B's shape (1.236 B parameters), bf16, batch 8 x 1,024 tokens, one
# H100 80GB, DeepSpeed ZeRO-2 (benchmarks/gpu/RESULTS.md, 2026-11-27, benchmarks/gpu/lora_bf16_1b.py).
RECORDED = {
    "lora_tokens_per_s": 49_409, "lora_params_b": 1.236, "lora_peak_gib": 23.9, "lora_tokens": 8 * 1024,
    "source": "benchmarks/gpu/RESULTS.md (H100 80GB, 2026-11-27): LoRA r=8 on a 1.24B Llama, bf16, "
              "batch 8 x 1024, DeepSpeed ZeRO-2: 49,409 tokens/s, peak 23.9 GiB",
}
# Assumptions, not measurements: no vLLM or NLLB run on a GPU has been recorded for this project yet.
# benchmarks/gpu/device_check.py measures the ones marked in MEASURABLE; once its JSON is recorded
# (DEVICE_RESULT) the plan reads those from it instead. Throughputs scale with 1/parameters.
ASSUMED = {
    "vllm_decode_tokens_per_s_at_1.24b": 25_000,  # one H100, multi-LoRA, batch 256
    "judge_prefill_tokens_per_s_at_7.24b": 25_000,  # SORRY-Bench Mistral-7B on vLLM, prompt-bound
    "nllb_tokens_per_s": 8_000,  # NLLB-600M through transformers generate() on one H100, batch 64 (data)
    # The judge replica back-translates each merged call at the translator's own batch (16, seq2seq.py):
    # decoding steps, not FLOPs, bound it, so far fewer tokens a second than at batch 64.
    "nllb_tokens_per_s_batch16": 2_500,
    "mean_answer_tokens": 200,  # refusals are short, compliances run longer; capped by max_new_tokens
    "judge_prompt_overhead_tokens": 160,  # SORRY-Bench template + the question
    "chars_per_token": 4.0,  # benign rows, any language (translations keep roughly the token count)
    "template_tokens": 20,  # chat template around each training example
    "padding_factor": 1.3,  # batches padded to their longest example
    "finetune_startup_s": 45,  # Ray Train + DeepSpeed start and model load per fine-tuned cell
    "engine_load_s": 30,  # a vLLM engine (generation, judge): one per base model's evaluation worker
    # KubeRay's autoscaler keeps an idle GPU node this long (infra/base/rayjob.yaml idleTimeoutSeconds),
    # billed, once per GPU node and stage (training, evaluation).
    "idle_timeout_s": 300,
    "gpu_nodes": 10,  # the paper RayJob's GPU group at most (infra/overlays/gpu/rayjob-gpu.yaml)
}
# What benchmarks/gpu/device_check.py measures, by the key of its JSON: figure -> (section, field).
MEASURABLE = {
    "judge_prefill_tokens_per_s_at_7.24b": ("judge_prefill", "tokens_per_s"),
    "nllb_tokens_per_s": ("nllb_batch64", "tokens_per_s"),
    "nllb_tokens_per_s_batch16": ("nllb_batch16", "tokens_per_s"),
}
DEVICE_RESULT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "device_check.json"
GPU_MEMORY_GIB = {"H100": 80, "H200": 141, "A100-80GB": 80, "A100-40GB": 40, "L40S": 48, "A10G": 24}
# The GPU worker group of infra/base/rayjob.yaml: 8 CPUs, 64 GiB, one GPU.
DEFAULT_NODE = {"CPU": 8.0, "GPU": 1.0, "memory_gib": 64.0}
# Activation bytes per token per (layer x hidden) in the recorded LoRA step, after its bf16 weights and
# fp32 logits (+ their gradient) are taken out of the 23.9 GiB peak: about 55.
_GIB = 1024**3


def _act_bytes() -> float:
    r = RECORDED
    weights = 2 * r["lora_params_b"] * 1e9
    logits = r["lora_tokens"] * 128_256 * 8
    return (r["lora_peak_gib"] * _GIB - weights - logits) / r["lora_tokens"] / (16 * 2048)


@dataclass
class Problem:
    what: str
    fix: str

    def text(self) -> str:
        return f"{self.what} — fix: {self.fix}"


def _hub_token_present() -> bool:
    try:
        from huggingface_hub import get_token
    except ImportError:
        return False
    return get_token() is not None  # HF_TOKEN or the token file; the value is never read out


def _in_hub_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def weights_status(alias: str, token: bool, problems: list[Problem]) -> dict[str, Any]:
    spec = model_spec(alias)
    facts = hub_facts(alias)
    out: dict[str, Any] = {"alias": alias, "source": spec.source, "hub_id": spec.hub_id,
                           "gated": bool(facts and facts.gated)}
    if spec.source != "hub":
        out["weights"] = f"built locally ({spec.source})"
        return out
    local = hub_local_dir(spec)
    if local is not None:
        out["weights"] = f"local: {local}"
    elif _in_hub_cache(spec.hub_id or ""):
        out["weights"] = "in the local hub cache"
    elif out["gated"] and not token:
        out["weights"] = "MISSING (gated, no hub token)"
        problems.append(Problem(
            f"model {alias} ({spec.hub_id}) is gated and has neither local weights nor a hub token",
            f"accept its licence on https://huggingface.co/{spec.hub_id}, then stage it into "
            f"$SAFEDRIFT_MODEL_DIR/{alias} (infra/README.md, 'Stage models and data') or set HF_TOKEN"))
    else:
        out["weights"] = "not present locally: fetched from the hub on first use" + (" (token present)" if token else "")
    return out


def _split_rows(cfg: StudyConfig, problems: list[Problem]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    try:
        jobs = plan_jobs(cfg)
    except SafedriftError as exc:
        problems.append(Problem(f"planning the data sets failed: {exc}", "see the message"))
        return [], []
    rows = []
    for j in jobs:
        rows.append({"split": j.kind, "lang": j.lang, "source": j.source, "rows": len(j.rows),
                     "route": route_name(j.route), "qa_back_route": route_name(j.back) if j.back else None,
                     "chars": sum(len(str(r.get("instruction", r.get("prompt", "")))) + len(str(r.get("input", "")))
                                  + len(str(r.get("output", ""))) for r in j.rows)})
        if not j.rows:
            problems.append(Problem(f"split {j.kind}/{j.lang} from {j.source} is empty",
                                    "give the source more rows or change the split's size setting"))
    return rows, list(jobs.skipped)


def _translator_weights(cfg: StudyConfig, names: set[str]) -> dict[str, str]:
    out = {}
    for name in sorted(names):
        t = make_translator(name, **dict(cfg.translate.options.get(name, {})))  # constructors load nothing
        model_id = getattr(t, "model_id", None)
        if model_id is None:
            out[name] = "no weights (rule-based or identity)"
        elif Path(model_id).is_dir() or _in_hub_cache(model_id):
            out[name] = f"{model_id}: present locally"
        else:
            out[name] = (f"{model_id}: NOT present locally — fetched from the hub on first use, or staged "
                         "(SAFEDRIFT_NLLB_MODEL / infra/stage.py)")
    return out


def _back_translation(cfg: StudyConfig, problems: list[Problem]) -> dict[str, str]:
    native = JUDGES.get(cfg.judge.name).native_languages
    out = {}
    for lang in cfg.eval_langs:
        if native is None or lang in native:
            out[lang] = "read as written"
            continue
        if not cfg.judge.back_translate:
            out[lang] = "judged as written (judge.back_translate=false)"
            continue
        try:
            route = plan_route(lang, "en", cfg.judge.translate_prefer)
            out[lang] = route_name(route)
        except SafedriftError:
            out[lang] = "none: judged as written, reported unvalidated"
            if cfg.judge.on_unjudgeable == "refuse":
                problems.append(Problem(f"no back-translation route {lang}->en with judge.translate_prefer="
                                        f"{cfg.judge.translate_prefer}", "add nllb to judge.translate_prefer"))
    return out


def train_memory_gib(alias: str, cfg: StudyConfig) -> float | None:
    """Upper bound of one training worker's GPU memory: bf16 weights, fp32 logits and their gradient, and
    activations scaled from the recorded step, for a micro-batch of batch_size x max_length tokens."""
    f = hub_facts(alias)
    if f is None:
        return None
    tokens = cfg.finetune.batch_size * cfg.finetune.max_length
    total = 2 * f.params_b * 1e9 + tokens * f.vocab * 8 + _act_bytes() * tokens * f.layers * f.hidden
    return total / _GIB


def _scale(alias: str, base_b: float) -> float:
    f = hub_facts(alias)
    return base_b / f.params_b if f else 1.0


def figures(result: Path = DEVICE_RESULT) -> dict[str, dict[str, Any]]:
    """Every figure the estimate rests on, each with where it comes from: measured (the recorded LoRA
    step; the device check's JSON, when recorded) or assumed."""
    out = {k: {"value": v, "source": "assumed"} for k, v in ASSUMED.items()}
    out["lora_tokens_per_s"] = {"value": RECORDED["lora_tokens_per_s"], "source": f"measured: {RECORDED['source']}"}
    if result.exists():
        data = yaml.safe_load(result.read_text(encoding="utf-8")) or {}
        for key, (section, field) in MEASURABLE.items():
            value = (data.get(section) or {}).get(field)
            if value:
                out[key] = {"value": value, "source": f"measured: {result.name} ({data.get('device', '?')}, "
                                                        f"{data.get('date', '?')})"}
    return out


def _translate_on_gpu(cfg: StudyConfig) -> bool:
    """Where the data sets' NLLB translation runs (pipelines/translate.actor_resources): on a GPU when the
    study runs on GPUs, whose group the autoscaler adds when the translators ask."""
    return any(TRANSLATORS.get(t).prefers_gpu for t in cfg.translate.prefer if t in TRANSLATORS.names()) and bool(
        cfg.finetune.use_gpu or cfg.evaluate.num_gpus)


def _judge_replicas(deploy: str | None) -> tuple[int, int]:
    """(min, max) GPU replicas of the judge the study deploys from `deploy` (1, 1 when none is deployed)."""
    if not deploy:
        return 1, 1
    data = yaml.safe_load(repo_path(deploy).read_text(encoding="utf-8")) or {}
    backend = ((data.get("applications") or [{}])[0].get("args") or {}).get("backend") or {}
    auto = backend.get("autoscaling") or {}
    n = backend.get("num_replicas") or 1
    return int(auto.get("min_replicas", n)), int(auto.get("max_replicas", n))


def _per_model_seconds(cfg: StudyConfig, splits: list[dict[str, Any]], f: dict[str, float]) -> dict[str, dict[str, float]]:
    """Busy GPU-seconds per base model and stage (one vLLM engine per base model answers all its cells)."""
    benign = {s["lang"]: s for s in splits if s["split"] == "benign"}
    answers = sum(s["rows"] for s in splits if s["split"] in ("eval", "eval_safe"))
    answers_bt = sum(s["rows"] for s in splits if s["split"] in ("eval", "eval_safe") and s["lang"] != "en")
    ans_tokens = min(cfg.generate.max_new_tokens, f["mean_answer_tokens"])
    judge_alias = cfg.judge.options.get("model") if cfg.judge.name == "sorry-bench" else None
    judge_b = hub_facts(judge_alias).params_b if judge_alias and hub_facts(judge_alias) else None
    back = cfg.judge.back_translate and any(h == "nllb" for h in cfg.judge.translate_prefer)
    per_model: dict[str, dict[str, float]] = {}
    for c in study_cells(cfg):
        m = per_model.setdefault(c.model, dict.fromkeys(("finetune", "generate", "judge", "back_translate"), 0.0))
        if not c.is_base:
            s = benign.get(c.ft_lang)
            rows = s["rows"] if s else 0
            tokens_per_row = (s["chars"] / max(rows, 1)) / f["chars_per_token"] + f["template_tokens"] if s else 0
            tokens = rows * tokens_per_row * c.epochs * f["padding_factor"]
            m["finetune"] += tokens / (f["lora_tokens_per_s"] * _scale(c.model, RECORDED["lora_params_b"]))
            m["finetune"] += f["finetune_startup_s"]
        load = f["engine_load_s"] if c.is_base else 0
        m["generate"] += answers * ans_tokens / (f["vllm_decode_tokens_per_s_at_1.24b"] * _scale(c.model, 1.24)) + load
        if judge_b:
            judge_tps = f["judge_prefill_tokens_per_s_at_7.24b"] * 7.24 / judge_b
            m["judge"] += answers * (ans_tokens + f["judge_prompt_overhead_tokens"]) / judge_tps + load
        if back:
            m["back_translate"] += answers_bt * ans_tokens / f["nllb_tokens_per_s_batch16"]
    return per_model


def gpu_hours(cfg: StudyConfig, splits: list[dict[str, Any]], deployed_from: str | None = None,
              result: Path = DEVICE_RESULT) -> dict[str, Any]:
    """Busy GPU-hours per stage, and the held ones a cluster bills: an evaluation worker holds its GPU
    while the judge replicas judge its answers, the judge's replicas (deployed from `deployed_from`) are
    held for the whole evaluation, translation actors from their model load, and each GPU node an idle
    timeout after its last work. `cfg` is served_judge's: the judge that labels."""
    figs = figures(result)
    f = {k: v["value"] for k, v in figs.items()}
    per_model = _per_model_seconds(cfg, splits, f)
    busy = {k: sum(m[k] for m in per_model.values()) / 3600 for k in ("finetune", "generate", "judge", "back_translate")}
    on_gpu = _translate_on_gpu(cfg)
    translate_chars = sum(s["chars"] for s in splits if "nllb" in (s["route"] or ""))
    translate_h = translate_chars / f["chars_per_token"] / f["nllb_tokens_per_s"] / 3600
    busy["translate"] = translate_h if on_gpu else 0.0
    lo, hi = _judge_replicas(deployed_from)
    # The judge replicas work through every model's answers; a model's worker waits for its own.
    evaluation_wall = max(max((m["generate"] + m["judge"] + m["back_translate"]) / 3600 for m in per_model.values()),
                          (busy["judge"] + busy["back_translate"]) / hi)
    actors = cfg.translate.concurrency if isinstance(cfg.translate.concurrency, int) else 1
    held = {"finetune": busy["finetune"],
            "evaluation_workers": sum(m["generate"] + m["judge"] + m["back_translate"] for m in per_model.values()) / 3600,
            "judge_replicas": max(busy["judge"] + busy["back_translate"], lo * evaluation_wall),
            "translate": (translate_h + actors * f["engine_load_s"] / 3600) if on_gpu else 0.0,
            "idle_nodes": f["gpu_nodes"] * f["idle_timeout_s"] * 2 / 3600}
    total_busy, total_held = sum(busy.values()), sum(held.values())
    return {"total_h100_hours": round(total_held, 1), "busy_h100_hours": round(total_busy, 1),
            "held_h100_hours": round(total_held, 1), "goal_h100_hours": 32, "within_goal": total_held <= 32,
            "by_stage": {k: round(v, 2) for k, v in busy.items()},
            "held_by_part": {k: round(v, 2) for k, v in held.items()},
            "translate_runs_on": "GPU" if on_gpu else "CPU (not billed as GPU time)",
            "by_model": {k: round(sum(v.values()) / 3600, 2) for k, v in per_model.items()},
            "answers_per_cell": sum(s["rows"] for s in splits if s["split"] in ("eval", "eval_safe")),
            "answers_back_translated_per_cell": sum(s["rows"] for s in splits
                                                    if s["split"] in ("eval", "eval_safe") and s["lang"] != "en"),
            "rows_machine_translated": sum(s["rows"] for s in splits if "nllb" in (s["route"] or "")),
            "figures": figs,
            "measured": sorted(k for k, v in figs.items() if v["source"].startswith("measured")),
            "recorded": RECORDED, "assumed": {k: v["value"] for k, v in figs.items() if v["source"] == "assumed"},
            "note": "perplexity, drift and the report are not counted (minutes per cell at most)"}


def _resources(cfg: StudyConfig, gpu: str, node: dict[str, float], problems: list[Problem]) -> dict[str, Any]:
    gpu_gib = GPU_MEMORY_GIB[gpu]
    needs = CellNeeds.of(cfg.finetune)
    shape = NodeShape({"CPU": node["CPU"], "GPU": node["GPU"]})
    slots = worker_slots(shape.resources, needs)
    if slots * Capacity([shape]).slots(needs) == 0 or slots < 1:
        problems.append(Problem(f"a cell needs {needs.describe()} but a node {shape.describe()} holds none",
                                "lower finetune.cpus_per_worker or use bigger nodes (--node-cpus)"))
    train = {}
    for alias in cfg.models:
        mem = train_memory_gib(alias, cfg)
        train[alias] = None if mem is None else round(mem, 1)
        if mem is not None and cfg.finetune.use_gpu and mem > gpu_gib:
            problems.append(Problem(
                f"fine-tuning {alias} needs up to {mem:.0f} GiB of GPU memory (batch {cfg.finetune.batch_size} x "
                f"{cfg.finetune.max_length} tokens) and a {gpu} has {gpu_gib} GiB: no node can hold the cell",
                "lower finetune.batch_size or finetune.max_length (raise grad_accum to keep the batch), or a bigger GPU"))
    gen_util = float(cfg.generate.options.get("gpu_memory_utilization", 0.9))
    gen = {}
    for alias in cfg.models:
        f = hub_facts(alias)
        if f:
            weights = 2 * f.params_b * 1e9 / _GIB
            gen[alias] = {"weights_gib": round(weights, 1), "engine_share_gib": round(gen_util * gpu_gib, 1)}
            if cfg.generate.backend == "vllm" and weights * 1.2 > gen_util * gpu_gib:
                problems.append(Problem(f"vLLM's share of the GPU ({gen_util} x {gpu_gib} GiB) cannot hold {alias}",
                                        "raise generate.options.gpu_memory_utilization"))
    judge: dict[str, Any] = {"name": cfg.judge.name}
    jm = cfg.judge.options.get("model") if cfg.judge.name == "sorry-bench" else None
    if jm and hub_facts(jm):
        w = 2 * hub_facts(jm).params_b * 1e9 / _GIB
        judge.update(weights_gib=round(w, 1), gpu_share_gib=round((1 - gen_util - 0.05) * gpu_gib, 1))
        if cfg.generate.backend == "vllm" and w * 1.2 > (1 - gen_util - 0.05) * gpu_gib:
            problems.append(Problem(f"the judge {jm} ({w:.0f} GiB) does not fit beside the generation engine",
                                    "lower generate.options.gpu_memory_utilization"))
    ev_need = evaluation_needs(cfg)
    try:
        check_evaluation_fits(ev_need, Capacity([NodeShape({"CPU": node["CPU"], "GPU": node["GPU"],
                                                            "memory": node["memory_gib"] * _GIB})]))
    except ClusterTooSmallError as exc:
        problems.append(Problem(str(exc).split(":")[0], "lower evaluate.num_cpus/num_gpus/memory_gb or use "
                                                        "bigger nodes (--node-cpus)"))
    evaluate = {"workers": len(cfg.models), "per_worker": {"CPU": cfg.evaluate.num_cpus, "GPU": cfg.evaluate.num_gpus,
                                                           "memory_gib": cfg.evaluate.memory_gb},
                "note": "one worker per base model after the training grid: it loads the model once and "
                        "serves every cell's adapter (vLLM multi-LoRA on a GPU), then releases it"}
    return {"gpu": gpu, "gpu_memory_gib": gpu_gib, "node": node, "evaluate": evaluate,
            "translate": {"actors": cfg.translate.concurrency, "cpus_per_actor": 0.5,
                          "gpus_per_actor": 1 if any(TRANSLATORS.get(t).prefers_gpu for t in cfg.translate.prefer
                                                     if t != "reference") else 0},
            "finetune": {"per_cell": needs.describe(), "gpu_memory_upper_bound_gib": train,
                         "cells_per_node": slots // max(1, needs.num_workers)},
            "generate": {"backend": cfg.generate.backend, "gpu_memory_utilization": gen_util, "per_model": gen},
            "judge": judge,
            "cluster": (f"GPU nodes of {int(node['CPU'])} CPUs, {node['memory_gib']:g} GiB and "
                        f"{int(node['GPU'])} x {gpu} each (one cell per GPU, sweep.max_concurrent="
                        f"{cfg.sweep.max_concurrent}), plus CPU nodes for translation; shared RWX volume at the workdir")}


def served_judge(cfg: StudyConfig) -> tuple[StudyConfig, str | None]:
    """The config with the judge that actually labels: a ``remote`` judge that the study deploys
    (judge.options.deploy, a Serve config) labels with that file's judge and language policy, so the plan
    counts its model, routes and GPU-hours. Returns (config, the Serve config's path or None)."""
    deploy = cfg.judge.options.get("deploy") if cfg.judge.name == "remote" else None
    if not deploy:
        return cfg, None
    data = yaml.safe_load(repo_path(deploy).read_text(encoding="utf-8")) or {}
    args = (data.get("applications") or [{}])[0].get("args", data)
    spec = args.get("judge") or {}
    judge = cfg.judge.model_copy(update={
        "name": spec.get("name", "refusal-phrase"), "options": spec.get("options") or {},
        "back_translate": spec.get("back_translate", True),
        "translate_prefer": spec.get("translate_prefer") or ["apertium"]})
    return cfg.model_copy(update={"judge": judge}), deploy


def build_plan(cfg: StudyConfig, gpu: str = "H100", node: dict[str, float] | None = None) -> dict[str, Any]:
    node = node or dict(DEFAULT_NODE)
    cfg, deployed_from = served_judge(cfg)
    problems: list[Problem] = []
    token = _hub_token_present()
    cells = study_cells(cfg)
    splits, skipped = _split_rows(cfg, problems)
    models = [weights_status(a, token, problems) for a in cfg.models]
    jm = cfg.judge.options.get("model")
    judge = {"name": cfg.judge.name, "options": cfg.public()["judge"]["options"], "served_by": deployed_from,
             "back_translation": _back_translation(cfg, problems),
             "weights": weights_status(jm, token, problems) if isinstance(jm, str) and jm in MODELS.names() else None}
    routes = {t for s in splits for r in (s["route"], s["qa_back_route"]) if r for t in
              [h.split(":")[0] for h in r.split("+")] if t not in ("reference", "native")}
    routes |= set(cfg.judge.translate_prefer) & set(TRANSLATORS.names())
    return {
        "config": {"name": cfg.name, "hash": cfg.digest(), "workdir": cfg.resolved_workdir()},
        "cells": {"total": len(cells), "base": sum(c.is_base for c in cells),
                  "fine_tuned": sum(not c.is_base for c in cells), "ids": [c.id for c in cells]},
        "splits": splits, "left_out": skipped,
        "translators": _translator_weights(cfg, routes - {"identity"}),
        "models": models, "hub_token": "present" if token else "absent",
        "judge": judge,
        "resources": _resources(cfg, gpu, node, problems),
        "gpu_hours": gpu_hours(cfg, splits, deployed_from),
        "deviations_from_study": deviations(cfg),
        "problems": [{"what": p.what, "fix": p.fix} for p in problems],
    }


def render_text(p: dict[str, Any]) -> str:
    c, g, r = p["cells"], p["gpu_hours"], p["resources"]
    lines = [f"plan for {p['config']['name']} (config {p['config']['hash']}, workdir {p['config']['workdir']})",
             f"cells: {c['total']} ({c['fine_tuned']} fine-tuned, {c['base']} base)", "splits (rows, route):"]
    for s in p["splits"]:
        back = f"  qa back: {s['qa_back_route']}" if s["qa_back_route"] else ""
        lines.append(f"  {s['split']:<15} {s['lang']:<3} {s['source']:<12} {s['rows']:>5}  {s['route']}{back}")
    for s in p["left_out"]:
        lines.append(f"  left out: {s['split']}/{s['lang']} from {s['source']} (no route)")
    lines.append("translators: " + "; ".join(f"{k}: {v}" for k, v in p["translators"].items()))
    lines.append(f"models (hub token {p['hub_token']}):")
    lines += [f"  {m['alias']}: {m['weights']}{' [gated]' if m['gated'] else ''}" for m in p["models"]]
    j = p["judge"]
    lines.append(f"judge: {j['name']} {j['options']}" + (f"; weights: {j['weights']['weights']}" if j["weights"] else "")
                 + (f"; served by the Serve application of {j['served_by']} (deployed by the study unless running)"
                    if j.get("served_by") else ""))
    lines.append("back-translation for the judge: " + ", ".join(f"{k}: {v}" for k, v in j["back_translation"].items()))
    lines.append(f"resources ({r['gpu']}, {r['gpu_memory_gib']} GiB):")
    lines.append(f"  translate: {r['translate']}")
    lines.append(f"  finetune: {r['finetune']['per_cell']} per cell; GPU memory upper bound (GiB): "
                 f"{r['finetune']['gpu_memory_upper_bound_gib']}")
    lines.append(f"  generate: {r['generate']['backend']}, gpu_memory_utilization {r['generate']['gpu_memory_utilization']}")
    e = r["evaluate"]
    lines.append(f"  evaluate: {e['workers']} worker(s), one per base model, each holding {e['per_worker']}")
    lines.append(f"  judge: {r['judge']}")
    lines.append(f"  cluster: {r['cluster']}")
    lines.append(f"GPU-hours (H100) billed: {g['held_h100_hours']} held, {g['busy_h100_hours']} busy (goal <= "
                 f"{g['goal_h100_hours']} held: {'met' if g['within_goal'] else 'NOT met'})")
    lines.append(f"  busy by stage {g['by_stage']}; held by part {g['held_by_part']}; by model {g['by_model']}")
    lines.append(f"  translation runs on: {g['translate_runs_on']}")
    lines.append(f"  answers per cell: {g['answers_per_cell']} ({g['answers_back_translated_per_cell']} back-translated)")
    lines.append("  measured: " + "; ".join(f"{k}={g['figures'][k]['value']:,} ({g['figures'][k]['source'][10:]})"
                                          for k in g["measured"]))
    lines.append("  assumed (not measured): " + ", ".join(f"{k}={v}" for k, v in g["assumed"].items()))
    lines.append("differs from the study: " + ("; ".join(p["deviations_from_study"]) or "nothing"))
    if p["problems"]:
        lines.append(f"PROBLEMS ({len(p['problems'])}): these would fail later")
        lines += [f"  - {q['what']} — fix: {q['fix']}" for q in p["problems"]]
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def check_node_args(cpus: float, gpus: float, memory_gib: float) -> dict[str, float]:
    if cpus <= 0 or gpus < 0 or memory_gib <= 0 or math.isnan(cpus):
        raise SafedriftError("--node-cpus and --node-memory must be positive, --node-gpus at least 0")
    return {"CPU": cpus, "GPU": gpus, "memory_gib": memory_gib}


__all__ = ["ASSUMED", "GPU_MEMORY_GIB", "RECORDED", "build_plan", "check_node_args",
           "render_text", "train_memory_gib"]
