"""The driver's memory and time for the sweep-level steps (issue #17 point 7), on a synthetic finished study.

    .venv/bin/python benchmarks/sweep/driver_memory.py                        # 330 cells × 2,835 prompts
    .venv/bin/python benchmarks/sweep/driver_memory.py --cells 12 --prompts 200 --out /tmp/dm.json

1. Synthesizes a workdir shaped like a finished paper study (configs/paper.yaml, trimmed to `--cells`):
   per cell, cells/<cell hash>/ holds what pipelines/sweep/cell.py::finish_cell leaves there: the generation
   parts (generations/, generations_safe/: one parquet per 256-prompt backend batch), judged.parquet
   (`--prompts` unsafe prompts, 315 per eval language in the paper: 2,835), judged_safe.parquet (the
   paper's 150 safe prompts per language, scaled with --prompts: 1,350), metrics_tidy.parquet (built by
   the real pipelines.evaluate.measure functions from the synthetic labels) and manifest.json (the real
   cluster.storage.write_manifest, with every file's size and sha256). Texts are random words from a
   small vocabulary, unique per row: prompts 60-400 characters, answers and their back-translations
   300-1,500 (the paper's max_new_tokens is 512), so reading them would show in memory.
2. Runs the driver's part of `safedrift run` after the sweep, in a fresh subprocess per variant:
   pipelines.run.run_study itself, with only Ray's start, the translate stage (its manifest is
   synthetic) and the Tune grid replaced: in place of the grid, each cell's nested MLflow run is created
   with its params and metrics (what the trials log; setup, not a driver step), then run_sweep's own
   tail gathers the cell manifests. Everything after that is the real code: search of the child runs,
   write_sweep_tidy (the cells' tidy tables, the deltas, one log_batch per cell), the report stage
   (study_context, write_report, log_artifacts to the parent run) and the sweep manifest. MLflow is a
   real sqlite store per run.
   Variants: `real` (the pipeline as it is: label columns only) and `naive` (the same, with the judged
   answers read whole: every column of every judged.parquet).
3. Two passes per variant, each a fresh process: `plain` gives the process's peak RSS
   (resource.getrusage ru_maxrss) untouched; `steps` resets the kernel's peak (VmHWM, via
   /proc/self/clear_refs) at the start of each step, giving each step's own peak. Wall time per step
   comes from both. Results: one JSON (--out)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PAPER_MODELS = 6
PAPER_LANGS = 9
PAPER_SEEDS = 3
PAPER_EPOCHS = 2
UNSAFE_PER_LANG = 315  # MultiJail, data.eval.n_harmful
SAFE_PER_LANG = 150  # XSTest safe 100 + OASST 50
GEN_BATCH = 256  # generate.batch_size: one generation part per backend batch
LAYERS = {"llama-3.2-1b-instruct": 16, "llama-3.2-3b-instruct": 28, "qwen3-0.6b": 28, "qwen3-4b": 36,
          "gemma-3-1b-it": 26, "gemma-3-4b-it": 34}
MULTIJAIL_CATEGORIES = [
    "Sexual exploitation & human trafficking", "Non-violent unethical behavior (e.g. lying, cheating, etc.)",
    "Adult content", "Hate speech & offensive language", "Discrimination & injustice",
    "Terrorism & organized crime", "Bullying & harassment", "Soliciting personally identifiable information",
    "Theft", "Violence & incitement", "Animal abuse", "Fraud & deception", "Conspiracy theories & misinformation",
    "Substance abuse & banned substances", "Property crime & vandalism", "Child abuse", "Weapons", "Self-harm"]
XSTEST_CATEGORIES = ["homonyms", "figurative_language", "safe_targets", "safe_contexts", "definitions",
                     "nons_group_real_discr", "real_group_nons_discr", "historical_events", "privacy_public",
                     "privacy_fictional"]
JUDGE = ("sorry-bench", "sorry-bench-judge-mistral-7b")


# ---- the grid ------------------------------------------------------------------------------------------

def grid_for(cells: int) -> tuple[int, int, int, int]:
    """(models, ft languages, seeds, epochs) within the paper's grid with models × (langs × seeds × epochs
    + 1 base) == cells; the most seeds (pooled deltas), then epochs, then models."""
    best = None
    for m in range(1, PAPER_MODELS + 1):
        for s in range(1, PAPER_SEEDS + 1):
            for e in range(1, PAPER_EPOCHS + 1):
                for lang in range(1, PAPER_LANGS + 1):
                    if m * (lang * s * e + 1) == cells and (best is None or (s, e, m) > best[0]):
                        best = ((s, e, m), (m, lang, s, e))
    if best is None:
        raise SystemExit(f"--cells {cells} is not models × (langs × seeds × epochs + 1) within the paper's "
                         f"grid ({PAPER_MODELS} × ({PAPER_LANGS} × {PAPER_SEEDS} × {PAPER_EPOCHS} + 1) = 330)")
    return best[1]


def study_config(workdir: Path, cells: int, tracking_uri: str | None = None) -> Any:
    from pipelines.presets import load_config

    base = load_config("paper", [f"workdir={workdir}"])
    m, lang, s, e = grid_for(cells)
    over = [f"workdir={workdir}", f"models=[{', '.join(base.models[:m])}]",
            f"ft_langs=[{', '.join(base.ft_langs[:lang])}]", f"seeds=[{', '.join(map(str, base.seeds[:s]))}]",
            f"epochs=[{', '.join(map(str, base.epochs[:e]))}]"]
    if tracking_uri:
        over.append(f"mlflow.tracking_uri={tracking_uri}")
    return load_config("paper", over)


# ---- synthesis -----------------------------------------------------------------------------------------

class Texts:
    """Random words from a small vocabulary in one long buffer; each text is a slice at a random offset,
    so every row's text is its own (no dictionary encoding in the parquet, no sharing when read)."""

    def __init__(self, rng: Any, words: int = 6_000_000) -> None:
        import numpy as np

        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        vocab = np.array(["".join(rng.choice(letters, size=int(n))) for n in rng.integers(2, 11, 3000)])
        self.buf = " ".join(vocab[rng.integers(0, vocab.size, words)].tolist())
        self.rng = rng

    def take(self, n: int, lo: int, hi: int) -> list[str]:
        lengths = self.rng.integers(lo, hi + 1, n).tolist()
        starts = self.rng.integers(0, len(self.buf) - hi - 1, n).tolist()
        return [self.buf[s:s + n_] for s, n_ in zip(starts, lengths, strict=True)]


def prompt_table(langs: list[str], total: int, per_lang_paper: int, dataset: str, categories: list[str],
                 texts: Texts, lengths: tuple[int, int]) -> Any:
    """The study's prompts (the same in every cell): `total` spread over the eval languages."""
    import polars as pl

    per = [total // len(langs) + (i < total % len(langs)) for i in range(len(langs))]
    rows_id, rows_lang, rows_cat = [], [], []
    for lang, n in zip(langs, per, strict=True):
        rows_id += [f"{dataset}/{i}" for i in range(n)]
        rows_lang += [lang] * n
        rows_cat += [categories[i * len(categories) // max(per_lang_paper, n)] for i in range(n)]
    n = len(rows_id)
    en = texts.take(n, *lengths)
    prompt = [e if lang == "en" else t for e, lang, t in zip(en, rows_lang, texts.take(n, *lengths), strict=True)]
    return pl.DataFrame({"id": rows_id, "lang": rows_lang, "category": rows_cat, "prompt": prompt, "prompt_en": en})


def judged_frame(prompts: Any, rng: Any, texts: Texts, p_row: Any, latent: Any, safe: bool,
                 answer_chars: tuple[int, int]) -> tuple[Any, Any]:
    """(the generation output, the judged answers) with judge_answers' columns for the paper's judge
    (SORRY-Bench, back-translation with NLLB outside English, no second judge)."""
    import numpy as np
    import polars as pl

    n = prompts.height
    cols = ["id", "lang", "category", "prompt", "prompt_en"] if safe else ["id", "lang", "category", "prompt"]
    answers = prompts.select(cols).with_columns(pl.Series("response", texts.take(n, *answer_chars), dtype=pl.String))
    english = (prompts["lang"] == "en").to_numpy()
    bt_en = texts.take(n, *answer_chars)
    noisy = np.clip(latent + rng.normal(0, 0.15, n), 0, 1)
    label = (noisy < p_row).astype(np.int8)
    unparseable = rng.random(n) < 0.01
    bt_failed = (~english) & (rng.random(n) < 0.002)
    back = (~english) & ~bt_failed
    judged = answers.with_columns(
        pl.Series("response_en", [r if e or f else t for r, e, f, t in
                                  zip(answers["response"].to_list(), english, bt_failed, bt_en, strict=True)],
                  dtype=pl.String),
        prompts["prompt_en"].alias("prompt_judge"),
        pl.Series("back_translated", back, dtype=pl.Boolean),
        pl.Series("bt_failed", bt_failed, dtype=pl.Boolean),
        pl.Series("bt_route", ["nllb" if b else None for b in back.tolist()], dtype=pl.String),
        pl.Series("judge_mode", np.where(english, "native", np.where(back, "back-translate", "as-written")),
                  dtype=pl.String),
        pl.Series("label", [None if u else v for u, v in zip(unparseable.tolist(), label.tolist(), strict=True)],
                  dtype=pl.Int8),
        pl.Series("score", np.where(unparseable, np.nan, rng.random(n)), dtype=pl.Float64),
        pl.lit(JUDGE[0]).alias("judge"),
        pl.lit(JUDGE[1]).alias("judge_version"),
    )
    return answers, judged


def cell_tidy(cell: Any, judged: Any, judged_safe: Any, langs: list[str], rng: Any) -> tuple[Any, dict[str, float], Any]:
    """metrics_tidy and the MLflow metrics of a cell, from the synthetic labels by the real measure functions
    (the fidelity, judge-validity, perplexity and drift numbers are drawn at random, in their real shapes)."""
    import polars as pl

    from pipelines.evaluate.measure import (
        Tidy,
        add_judge_rows,
        add_safety_rows,
        compliance_by_category,
        compliance_by_lang,
        metric_dict,
        overrefusal_by_lang,
    )

    table = compliance_by_lang(judged)
    metrics = metric_dict(table)
    tidy = Tidy(cell.to_dict(), cell.id)
    over = overrefusal_by_lang(judged_safe)
    fid = [{"lang": lang, "n": int(judged.filter(pl.col("lang") == lang).height), "rate": r, "ci_low": r - 0.03,
            "ci_high": min(1.0, r + 0.03)} for lang in langs for r in [float(rng.uniform(0.7, 0.99))]]
    add_safety_rows(tidy, table, over, fid, compliance_by_category(judged), metrics)
    metrics["generate/answers_per_s"] = float(rng.uniform(20, 60))
    for lang in langs:
        kappa, acc = float(rng.uniform(0.6, 0.9)), float(rng.uniform(0.8, 0.95))
        tidy.add(lang, "judge/validated", 1.0, n=450)
        tidy.add(lang, "judge/kappa", kappa, n=450)
        tidy.add(lang, "judge/accuracy", acc, n=450)
        metrics |= {f"judge/validated/{lang}": 1.0, f"judge/kappa/{lang}": kappa, f"judge/accuracy/{lang}": acc}
    metrics |= {"judge/kappa": 0.81, "judge/accuracy": 0.92, "judge/heldout_unparseable": 0.0}
    metrics |= add_judge_rows(tidy, pl.concat([judged, judged_safe], how="diagonal_relaxed"))
    ppl = float(rng.uniform(8, 30))
    tidy.add("en", "ppl_wikitext2", ppl, n=65536)
    metrics["capability/ppl_wikitext2"] = ppl
    for lang in langs:
        v = float(rng.uniform(3, 20))
        tidy.add(lang, "ppl_benign", v, n=99)
        metrics[f"capability/ppl_benign/{lang}"] = v
    if not cell.is_base:
        for k in range(LAYERS.get(cell.model, 28) + 1):
            for name, v in (("l2", k * 0.01 * rng.uniform(0.5, 2)), ("cos", 1 - k * 1e-4),
                            ("refusal_proj", float(rng.normal(0, 0.01)))):
                tidy.add("all", f"drift/{name}/layer_{k}", float(v), n=judged.height)
                metrics[f"drift/{name}/layer_{k}"] = float(v)
    metrics |= {"time/finetune_s": 0.0 if cell.is_base else float(rng.uniform(600, 3000)),
                "time/generate_s": float(rng.uniform(60, 200)), "time/judge_s": float(rng.uniform(60, 200)),
                "time/capability_drift_s": float(rng.uniform(30, 120))}
    if not cell.is_base:
        metrics["train/final_loss"] = float(rng.uniform(0.8, 1.6))
    return tidy.frame(), {k: float(v) for k, v in metrics.items() if v == v}, table


def train_record(cfg: Any, cell: Any, rng: Any) -> dict[str, Any]:
    """What finetune_cell returns into the cell manifest (the checkpoint's manifest) for a fine-tuned cell."""
    if cell.is_base:
        return {}
    steps = cell.epochs * -(-cfg.data.benign.n // (cfg.finetune.batch_size * cfg.finetune.grad_accum))
    losses = [round(float(2.0 * 0.99 ** i + rng.normal(0, 0.05)), 4) for i in range(steps)]
    return {"cell": cell.to_dict(), "method": "lora", "metrics": {"train_loss": losses[-1], "epoch": cell.epochs},
            "losses": losses, "train_seconds": float(rng.uniform(600, 3000)),
            "files": {"adapter/adapter_config.json": {"size": 890, "sha256": uuid.uuid4().hex * 2},
                      "adapter/adapter_model.safetensors": {"size": 9_000_000, "sha256": uuid.uuid4().hex * 2}},
            "created_at": "2026-01-01T00:00:00Z", "reused": False}


def synthesize(workdir: Path, cells: int, prompts: int, safe_prompts: int, seed: int) -> dict[str, Any]:
    import numpy as np

    from cluster.storage import write_manifest, write_parquet_atomic
    from pipelines.cells import cell_dir, study_cells, study_hashes
    from pipelines.layout import Workdir

    t0 = time.time()
    cfg = study_config(workdir, cells)
    wd = Workdir.open(workdir)
    ds_hash, study_hash = study_hashes(cfg)
    langs = list(cfg.eval_langs)
    rng = np.random.default_rng(seed)
    texts = Texts(rng, words=min(6_000_000, max(500_000, (prompts + safe_prompts) * 1500)))
    unsafe = prompt_table(langs, prompts, UNSAFE_PER_LANG, "multijail", MULTIJAIL_CATEGORIES, texts, (60, 400))
    safe = prompt_table(langs, safe_prompts, SAFE_PER_LANG, "xstest", XSTEST_CATEGORIES, texts, (60, 400))
    latent_u, latent_s = rng.random(unsafe.height), rng.random(safe.height)
    lang_u, lang_s = unsafe["lang"].to_list(), safe["lang"].to_list()
    base_rate = {(m, lang): float(rng.uniform(0.05, 0.3)) for m in cfg.models for lang in langs}
    effect = {(m, ft, lang, ep): float(rng.normal(0.03 * ep, 0.04) + (0.1 if ft == lang else 0.0))
              for m in cfg.models for ft in cfg.ft_langs for lang in langs for ep in cfg.epochs}
    write_manifest(wd.datasets(ds_hash), sources={"multijail": "ab" * 32, "xstest_safe": "cd" * 32,
                                                  "hplt_oasst": "ef" * 32, "alpaca_en": "01" * 32, "alpaca_zh": "23" * 32},
                   eval_langs=langs, ft_langs=list(cfg.ft_langs), translator_versions={"nllb": "nllb-200-distilled-600M"},
                   routes={f"eval/{lang}": "reference" for lang in langs}, qa={}, synthetic=True)
    sizes: dict[str, int] = {}
    files = rows = rows_safe = tidy_rows = 0
    for cell in study_cells(cfg):
        out = cell_dir(wd, cfg, cell, ds_hash)
        p_u = np.array([base_rate[cell.model, lang] + (0.0 if cell.is_base else
                                                       effect[cell.model, cell.ft_lang, lang, cell.epochs])
                        for lang in lang_u])
        p_s = np.full(len(lang_s), 0.85 if cell.is_base else 0.8)  # label 1: answered, 0: refused
        answers, judged = judged_frame(unsafe, rng, texts, np.clip(p_u, 0, 1), latent_u, False, (300, 1500))
        answers_s, judged_s = judged_frame(safe, rng, texts, p_s, latent_s, True, (300, 1500))
        for sub, frame in (("generations", answers), ("generations_safe", answers_s)):
            for b, start in enumerate(range(0, frame.height, GEN_BATCH)):
                write_parquet_atomic(frame.slice(start, GEN_BATCH), out / sub / f"part-{b:05d}.parquet")
        tidy, metrics, table = cell_tidy(cell, judged, judged_s, langs, rng)
        write_parquet_atomic(judged, out / "judged.parquet")
        write_parquet_atomic(judged_s, out / "judged_safe.parquet")
        write_parquet_atomic(tidy, out / "metrics_tidy.parquet")
        write_manifest(out, cell=cell.to_dict(), cell_id=cell.id, cell_hash=out.name, metrics=metrics,
                       compliance=table.to_dicts(), mlflow_run_id=uuid.uuid4().hex, train=train_record(cfg, cell, rng))
        rows += judged.height
        rows_safe += judged_s.height
        tidy_rows += tidy.height
        for p in out.rglob("*"):
            if p.is_file():
                key = p.parent.name if p.parent != out else p.name
                sizes[key] = sizes.get(key, 0) + p.stat().st_size
                files += 1
    return {"cells": len(study_cells(cfg)), "grid": dict(zip(("models", "ft_langs", "seeds", "epochs"),
                                                            grid_for(cells), strict=True)),
            "eval_langs": len(langs), "study_hash": study_hash, "datasets_hash": ds_hash,
            "prompts_unsafe_per_cell": unsafe.height, "prompts_safe_per_cell": safe.height,
            "rows_judged": rows, "rows_judged_safe": rows_safe, "rows_metrics_tidy": tidy_rows,
            "files": files, "bytes": dict(sorted(sizes.items())), "bytes_total": sum(sizes.values()),
            "seconds": round(time.time() - t0, 1)}


# ---- measurement (the child process) -----------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak RSS) to the current RSS
        return True
    except OSError:
        return False


class Timeline:
    """Consecutive steps: `mark(name)` ends the current step and starts the next. With `step_peaks`, the
    kernel's peak RSS is reset at each mark, so a step's peak is its own; the lifetime peak is then the
    largest step peak (the first step runs from the process's start)."""

    def __init__(self, step_peaks: bool) -> None:
        self.step_peaks = step_peaks
        self.steps: list[dict[str, Any]] = []
        self.name = "start_and_imports"
        self.t0 = time.perf_counter()
        self.rss0 = 0
        self._sampled = 0
        self._stop = False
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop:
            self._sampled = max(self._sampled, _status_kib("VmRSS"))
            time.sleep(0.02)

    def mark(self, name: str | None) -> None:
        now, rss = time.perf_counter(), _status_kib("VmRSS")
        self.steps.append({"step": self.name, "wall_s": round(now - self.t0, 3),
                           "start_rss_mib": round(self.rss0 / 1024, 1), "end_rss_mib": round(rss / 1024, 1),
                           "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1) if self.step_peaks else None,
                           "sampled_peak_rss_mib": round(max(self._sampled, rss) / 1024, 1)})
        if self.step_peaks and not _reset_peak():
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); run with --passes plain")
        self._sampled = 0
        self.name, self.t0, self.rss0 = name, time.perf_counter(), _status_kib("VmRSS")
        if name is None:
            self._stop = True


def measure(workdir: Path, cells: int, variant: str, step_peaks: bool) -> dict[str, Any]:
    tl = Timeline(step_peaks)
    import mlflow
    import polars as pl
    from mlflow.entities import Metric, Param

    import cluster.storage as storage
    import pipelines.evaluate.measure as measure_mod
    import pipelines.run as run
    import pipelines.sweep.tidy as tidy_mod
    from pipelines.cells import cell_dir, study_cells
    from pipelines.sweep import SweepError
    from pipelines.sweep.cell import flat_params
    from pipelines.translate import DatasetsOutput

    store = workdir / "mlflow-runs" / f"{variant}-{'steps' if step_peaks else 'plain'}-{uuid.uuid4().hex[:6]}"
    store.mkdir(parents=True)
    cfg = study_config(workdir, cells, tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    log_batch = {"calls": 0, "seconds": 0.0, "metrics": 0}
    orig_log_batch = mlflow.MlflowClient.log_batch

    def timed_log_batch(self: Any, run_id: str, metrics: Any = (), *args: Any, **kwargs: Any) -> Any:
        if tl.name != "delta_rows_log_batch_write_tidy":
            return orig_log_batch(self, run_id, metrics, *args, **kwargs)
        t = time.perf_counter()
        try:
            return orig_log_batch(self, run_id, metrics, *args, **kwargs)
        finally:
            log_batch["calls"] += 1
            log_batch["metrics"] += len(metrics)
            log_batch["seconds"] += time.perf_counter() - t

    def trials_then_gather(study: Any, sweep_name: str, resume: bool = True) -> list[dict[str, Any]]:
        # run_sweep's signature: the running cells.Study carries the config, workdir, hashes and tracking.
        cfg, wd, ds_hash, tracking = study.cfg, study.wd, study.ds_hash, study.tracking
        # What the Tune trials did (not the driver): each cell's nested run, with its params and metrics.
        tl.mark("setup_cell_runs_as_trials_log_them")
        client = mlflow.MlflowClient(tracking.uri)
        now = int(time.time() * 1000)
        for c in study_cells(cfg):
            d = cell_dir(wd, cfg, c, ds_hash)
            m = storage.read_json(d / "manifest.json")
            r = client.create_run(tracking.experiment_id, run_name=c.id, tags={
                "mlflow.parentRunId": tracking.parent_run_id, "safedrift.cell": c.id, "safedrift.model": c.model,
                "safedrift.ft_lang": c.ft_lang, "safedrift.cell_hash": d.name})
            params = [Param(k, v) for k, v in flat_params(cfg, c).items()]
            for i in range(0, max(len(params), 1), 100):
                client.log_batch(r.info.run_id, params=params[i:i + 100])
            client.log_batch(r.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in m["metrics"].items()])
            client.set_terminated(r.info.run_id)
        # A fresh sweep's driver has hashed none of the files its trials wrote.
        storage._DIGESTS.clear()
        tl.mark("gather_cell_manifests")
        # run_sweep's own tail (pipelines/sweep/__init__.py), for a sweep that ran every cell.
        cells = study_cells(cfg)
        done: list[Any] = []
        results = []
        for c in cells:
            manifest = storage.read_manifest(cell_dir(wd, cfg, c, ds_hash))
            if manifest is None:
                raise SweepError(f"cell {c.id} has no result after the sweep; rerun with --resume")
            results.append(manifest | {"reused": c in done})
        tl.mark("search_child_runs")
        return results

    def step(name: str, fn: Any, after: str | None = None) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            tl.mark(name)
            out = fn(*args, **kwargs)
            if after:
                tl.mark(after)
            return out
        return wrapped

    def translate_stage(running: Any) -> tuple[Any, bool]:
        study = running.study  # run.StudyRun: the Study and the translation plan
        path = study.wd.datasets(study.ds_hash)
        return DatasetsOutput(path, storage.read_manifest(path), reused=True), True

    def labels_whole(d: Path, name: str = "judged.parquet") -> Any:
        path = d / name
        return pl.read_parquet(path) if path.exists() else None  # every column: the answer texts too

    run.connect = lambda *a, **k: None
    run.check_fits = lambda cfg: None
    run.translate_stage = translate_stage
    run.run_sweep = trials_then_gather
    run.write_sweep_tidy = step("read_cell_tidy_tables", run.write_sweep_tidy)
    # sweep/tidy.py calls the deltas by the name it imported: patched there.
    tidy_mod.sweep_deltas = step("deltas", tidy_mod.sweep_deltas, after="delta_rows_log_batch_write_tidy")
    run.write_report = step("write_report", run.write_report, after="log_report_artifacts")
    run.write_manifest = step("sweep_manifest", run.write_manifest)
    mlflow.MlflowClient.log_batch = timed_log_batch
    if variant == "naive":
        measure_mod._labels = labels_whole
    baseline = _status_kib("VmRSS")
    tl.mark("study_start_precheck_and_parent_run")
    t0 = time.perf_counter()
    result = run.run_study(cfg)
    tl.mark(None)
    wall = time.perf_counter() - t0
    tidy = pl.read_parquet(result.report_path / "metrics_tidy.parquet", columns=["metric"])
    driver_steps = [s for s in tl.steps if s["step"] not in ("start_and_imports", "setup_cell_runs_as_trials_log_them")]
    return {"variant": variant, "pass": "steps" if step_peaks else "plain",
            "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "lifetime_peak_rss_mib": round(max(s["peak_rss_mib"] for s in tl.steps), 1) if step_peaks else None,
            "rss_after_imports_mib": round(baseline / 1024, 1),
            "run_study_wall_s": round(wall, 2),
            "driver_wall_s": round(sum(s["wall_s"] for s in driver_steps), 2),
            "steps": tl.steps, "log_batch": log_batch | {"seconds": round(log_batch["seconds"], 2)},
            "tidy_rows": tidy.height, "delta_rows": tidy.filter(pl.col("metric").str.starts_with("delta/")).height,
            "cells": len(result.results), "report": str(result.report_path)}


# ---- the parent ----------------------------------------------------------------------------------------

def run_child(args: argparse.Namespace, workdir: Path, variant: str, passname: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", variant, "--pass", passname,
           "--workdir", str(workdir), "--cells", str(args.cells)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{variant}/{passname} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=330)
    ap.add_argument("--prompts", type=int, default=PAPER_LANGS * UNSAFE_PER_LANG, help="unsafe prompts per cell")
    ap.add_argument("--safe-prompts", type=int, default=None,
                    help="safe prompts per cell (default: the paper's 150 per 315 unsafe)")
    ap.add_argument("--workdir", type=Path, default=None, help="kept; reused when it holds the same synthesis")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "driver_memory.json")
    ap.add_argument("--passes", default="plain,steps", help="plain (ru_maxrss), steps (per-step peaks)")
    ap.add_argument("--variants", default="real,naive")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--measure", choices=["real", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--pass", dest="passname", choices=["plain", "steps"], default="steps", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.workdir, args.cells, args.measure, args.passname == "steps")))
        return 0
    safe = args.safe_prompts if args.safe_prompts is not None else round(args.prompts * SAFE_PER_LANG / UNSAFE_PER_LANG)
    keep = args.workdir is not None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="safedrift-drivermem-"))).resolve()
    spec = {"cells": args.cells, "prompts": args.prompts, "safe_prompts": safe, "seed": args.seed}
    marker = workdir / "synthetic.json"
    try:
        if marker.exists() and json.loads(marker.read_text()).get("spec") == spec:
            synth = json.loads(marker.read_text())["synthesis"] | {"reused": True}
        else:
            for sub in ("cells", "sweeps", "reports", "datasets", "mlflow-runs", "mlartifacts"):
                shutil.rmtree(workdir / sub, ignore_errors=True)
            synth = synthesize(workdir, args.cells, args.prompts, safe, args.seed)
            marker.write_text(json.dumps({"spec": spec, "synthesis": synth}, indent=2))
        print(f"synthesized: {json.dumps(synth)}", file=sys.stderr)
        runs: dict[str, dict[str, Any]] = {}
        for variant in args.variants.split(","):
            for passname in args.passes.split(","):
                r = run_child(args, workdir, variant, passname)
                runs.setdefault(variant, {})[passname] = r
                print(f"{variant}/{passname}: ru_maxrss {r['ru_maxrss_mib']} MiB, driver {r['driver_wall_s']} s",
                      file=sys.stderr)
        result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "spec": spec, "synthesis": synth,
                  "runs": runs, "machine": {"cpus": os.cpu_count(), "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                                            "python": platform.python_version(), "platform": platform.platform()},
                  "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({v: {p: {"ru_maxrss_mib": r["ru_maxrss_mib"], "driver_wall_s": r["driver_wall_s"]}
                              for p, r in ps.items()} for v, ps in runs.items()}))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
