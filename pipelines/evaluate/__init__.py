"""Evaluate one cell: answer the unsafe and safe prompts in every eval language, judge the answers
(back-translated where a route exists), and measure compliance, over-refusal, per-category rates, language
fidelity, the judge's agreement with people, capability (perplexity, optional user sets) and, for a
fine-tuned cell, hidden-state drift against its base model.

``evaluate_cell`` is a pure function of (config, cell, weights, data): it returns the cell's evaluation
and writes nothing but its resumable generation parts under the scratch directory it is given. Caching,
MLflow and the cell's manifest are the sweep's: `finish_cell` in pipelines/sweep/cell.py, run by the
evaluation workers of pipelines/sweep/evaluation.py. Given the worker's ``EvalSession`` it answers, scores and measures drift with the
worker's one copy of the base model (the cell's adapter switched in) and the worker's judges; without one it makes its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cluster import progress
from cluster.storage import read_json, write_json_atomic
from pipelines.cells import Cell, evaluate_key
from pipelines.config import StudyConfig
from pipelines.evaluate import capability, drift
from pipelines.evaluate.evalsets import eval_prompts, heldout_benign, safe_prompts
from pipelines.evaluate.generate import generate_cell
from pipelines.evaluate.judge import judge_answers, judging_of
from pipelines.evaluate.judges import Judge
from pipelines.evaluate.judges.validity import judge_validity
from pipelines.evaluate.measure import (
    Tidy,
    add_judge_rows,
    add_read_rows,
    add_safety_rows,
    compliance_by_category,
    compliance_by_lang,
    fidelity_by_lang,
    metric_dict,
    non_answer_by_lang,
    other_lang_by_lang,
    overrefusal_by_lang,
)
from pipelines.evaluate.session import EvalSession
from pipelines.evaluate.stats import is_number
from pipelines.evaluate.weights import Weights
from pipelines.hashing import stable_hash

__all__ = ["CellEvaluation", "EvalSession", "Weights", "evaluate_cell"]


@dataclass
class CellEvaluation:
    metrics: dict[str, float]  # MLflow metric name -> value (a NaN rate left out: the tidy rows keep it as null)
    tidy: Tidy  # one row per eval language × metric
    judged: pl.DataFrame  # unsafe prompts' answers with labels
    judged_safe: pl.DataFrame  # safe prompts' answers with labels (empty without over-refusal prompts)
    compliance: pl.DataFrame  # compliance per eval language with intervals
    judge: dict[str, Any] = field(default_factory=dict)  # name, version, held-out n
    timing: dict[str, float] = field(default_factory=dict)  # seconds per stage (time/*_s)


def evaluate_cell(cfg: StudyConfig, cell: Cell, weights: Weights, ds_path: Path, scratch: Path,
                  session: EvalSession | None = None) -> CellEvaluation:
    own = session is None
    session = session or EvalSession(cfg.generate.threads)
    try:
        return _evaluate(cfg, cell, weights, ds_path, scratch, session)
    finally:
        if own:
            session.close()
        else:
            session.model(weights.model).forget(weights.adapter)  # one adapter attached at a time
            if weights.model != weights.base:
                session.release(weights.model)  # a full fine-tune's own copy serves this cell only


def _evaluate(cfg: StudyConfig, cell: Cell, weights: Weights, ds_path: Path, scratch: Path,
              session: EvalSession) -> CellEvaluation:
    unsafe, safe, benign = (f(cfg, ds_path) for f in (eval_prompts, safe_prompts, heldout_benign))
    timing: dict[str, float] = {}
    t0 = time.time()
    answers = generate_cell(weights.model, weights.adapter, unsafe, cfg.generate, scratch / "generations",
                            desc=f"generate {cell.id}", session=session)
    gen_s = time.time() - t0
    safe_answers = generate_cell(weights.model, weights.adapter, safe.select("id", "lang", "category", "prompt", "prompt_en"),
                                 cfg.generate, scratch / "generations_safe", desc=f"generate safe {cell.id}",
                                 stage="generate safe", session=session)
    timing["time/generate_s"] = time.time() - t0

    progress.update("judge")
    t0 = time.time()
    judge, second = session.judges(cfg)
    judged = judge_answers(answers, cfg.judge, judge, second)
    judged_safe = judge_answers(safe_answers, cfg.judge, judge, second) if safe_answers.height else safe_answers
    timing["time/judge_s"] = time.time() - t0

    table = compliance_by_lang(judged)
    metrics = metric_dict(table)
    tidy = Tidy(cell.to_dict(), cell.id)
    over = overrefusal_by_lang(judged_safe) if safe_answers.height else []
    fid = fidelity_by_lang(judged) if cfg.evaluate.fidelity else []
    add_safety_rows(tidy, table, over, fid, compliance_by_category(judged), metrics,
                    non_answer_by_lang(judged_safe) if safe_answers.height else [],
                    other_lang_by_lang(pl.concat([judged, judged_safe], how="diagonal_relaxed")
                                       if judged_safe.height else judged))
    metrics["generate/answers_per_s"] = float(unsafe.height / gen_s) if gen_s > 0 and unsafe.height else 0.0
    agreement, judge_info = judge_agreement(cfg, judge, second, tidy)
    metrics |= agreement
    metrics |= add_judge_rows(tidy, pl.concat([judged, judged_safe], how="diagonal_relaxed")
                              if judged_safe.height else judged)
    metrics |= add_read_rows(tidy, judged, judged_safe)

    progress.update("capability and drift")
    t0 = time.time()
    metrics |= measured_once(scratch / CAPABILITY, capability_key(cfg, weights, unsafe, safe, benign), tidy,
                             lambda: capability_and_drift(cfg, cell, weights, unsafe, safe, benign, tidy, session))
    timing["time/capability_drift_s"] = time.time() - t0
    # NaN (a rate over no parseable answer) is left out: the tidy table keeps it as null with n.
    metrics = {k: float(v) for k, v in metrics.items() if is_number(v)}
    return CellEvaluation(metrics, tidy, judged, judged_safe, table, judge_info, timing)


# Per language beyond κ and accuracy, from the validity row (judges/validity.py: agreement).
VALIDITY_METRICS = ("kappa_ci_low", "kappa_ci_high", "rate_error", "non_answer_recall")
BESIDE_METRICS = {"xstest": (("xstest_kappa", "kappa"),),
                  "small_models": (("small_kappa", "kappa"), ("small_rate_error", "rate_error"))}


def judge_agreement(cfg: StudyConfig, judge: Judge, second: Judge | None,
                    tidy: Tidy) -> tuple[dict[str, float], dict[str, Any]]:
    """Each judge's κ and accuracy with people per eval language, for the way that language is judged
    (back-translated or as written; judges/validity.py: held out by source model and prompt), cached per
    judge config. judge/kappa and judge/accuracy (no language) are English's. A language with nothing to
    validate on gets judge/validated/<lang> = 0 and no κ: the report marks it unvalidated."""
    info: dict[str, Any] = {"name": judge.name, "version": judge.version}
    if not cfg.judge.agreement:
        return {}, info
    metrics: dict[str, float] = {}
    for prefix, j, opts, sec in (("judge", judge, cfg.judge.options, False),
                                 ("judge2", second, cfg.judge.second_options, True)):
        if j is None:
            continue
        langs = j.served_languages(cfg.eval_langs)  # a judge service: its own policy and κ per language
        if langs is not None:
            en = next((r for r in langs if r["language"] == "en" and r["validated"]), None)
        else:
            judging = judging_of(cfg.judge, j, second=sec)
            rows = judge_validity(j, opts, cfg.eval_langs, cfg.judge.translate_prefer, cfg.judge.labels,
                                  cfg.judge.agreement_limit, back_translate=judging.back_translate)
            langs = judging.languages_info(cfg.eval_langs, rows)
            en = next((r for r in rows if r["lang"] == "en" and r["source"] == "human"), None)
        for r in langs:
            lang, ok = r["language"], r["validated"]
            metrics[f"{prefix}/validated/{lang}"] = float(ok)
            tidy.add(lang, f"{prefix}/validated", float(ok), n=r["n"])
            # κ is None where a language's labels hold one class only (validity.py); the rest still counts.
            for name in ("kappa", "accuracy", *VALIDITY_METRICS):
                value = r.get(name) if ok else None
                if value is not None:
                    metrics[f"{prefix}/{name}/{lang}"] = value
                if name in ("kappa", "accuracy") or ok:
                    tidy.add(lang, f"{prefix}/{name}", value, n=r["n"])
            # Both figures beside the headline one: XSTest's and small models' answers (policy.languages_info).
            for key, names in BESIDE_METRICS.items():
                fig = r.get(key) or {}
                for name, field_ in names:
                    if fig.get(field_) is not None:
                        metrics[f"{prefix}/{name}/{lang}"] = fig[field_]
                        tidy.add(lang, f"{prefix}/{name}", fig[field_], n=fig["n"])
        if en is not None:
            metrics[f"{prefix}_en/kappa" if sec else "judge/kappa"] = en["kappa"]
            metrics[f"{prefix}_en/accuracy" if sec else "judge/accuracy"] = en["accuracy"]
            if not sec:
                metrics["judge/heldout_unparseable"] = float(en.get("unparseable", float("nan")))
                info["heldout_n"] = int(en["n"])
        info[f"{prefix}_languages"] = langs
    return metrics, info


# A cell's capability and drift, kept beside its answers: they depend on the weights, the evaluation
# settings and the prompts, never on the judge, so a cell judged again after a judge change (sweep/rejudge.py)
# reads them back instead of measuring them again (28 of the 30 s a laptop cell took to re-judge).
CAPABILITY = "capability.json"


def capability_key(cfg: StudyConfig, weights: Weights, unsafe: pl.DataFrame, safe: pl.DataFrame,
                   benign: pl.DataFrame) -> str:
    """What capability and drift depend on. Weights by their last two path parts (models/<name-hash>,
    <train hash>/adapter), so a copied workdir or cache keeps its measurements."""
    return stable_hash({**evaluate_key(cfg), "eval_langs": cfg.eval_langs,
                        "weights": ["/".join(p.parts[-2:]) for p in (weights.base, weights.model, weights.adapter) if p],
                        "benign": benign.select("lang", "instruction", "output").rows(),
                        "unsafe": unsafe.select("lang", "prompt").rows(), "safe": safe.select("lang", "prompt").rows()})


def measured_once(path: Path, key: str, tidy: Tidy, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`measure()`'s metrics and the tidy rows it adds, stored at `path` with `key` the first time and read
    back while the key is the same (a damaged file, or one measured on other inputs, is measured again)."""
    try:
        saved = read_json(path)
        rows, metrics = list(saved["rows"]), dict(saved["metrics"])  # both read before either is used
        same = saved["key"] == key
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if same:
        tidy.rows += rows
        return metrics
    start = len(tidy.rows)
    metrics = measure()
    write_json_atomic(path, {"key": key, "metrics": metrics, "rows": tidy.rows[start:]})
    return metrics


def capability_and_drift(cfg: StudyConfig, cell: Cell, weights: Weights, unsafe: pl.DataFrame,
                         safe: pl.DataFrame, benign: pl.DataFrame, tidy: Tidy,
                         session: EvalSession) -> dict[str, float]:
    """WikiText-2 and held-out benign perplexity, optional user MMLU/AlpacaEval-style files, and (fine-tuned
    cells) hidden-state drift against the base model projected on the base model's refusal direction. All on
    the session's copy of the model (bf16 on a GPU), the cell's adapter active."""
    ev = cfg.evaluate
    metrics: dict[str, float] = {}
    loaded = session.model(weights.model)
    model, tok = loaded.activate(weights.adapter), loaded.tok
    if ev.ppl_tokens:
        ppl, n = capability.wikitext_ppl(model, tok, ev.ppl_tokens, ev.ppl_window, ev.ppl_stride)
        metrics["capability/ppl_wikitext2"] = ppl
        tidy.add("en", "ppl_wikitext2", ppl, n=n)
    for (lang,), g in benign.group_by("lang", maintain_order=True):
        ppl, n = capability.answer_ppl(model, tok, list(zip(g["instruction"], g["output"], strict=True)))
        metrics[f"capability/ppl_benign/{lang}"] = ppl
        tidy.add(lang, "ppl_benign", ppl, n=n)
    # User files were checked before the study started (user_sets.check_user_files).
    if ev.mmlu_path:
        acc, n = capability.mmlu_accuracy(model, tok, Path(ev.mmlu_path), ev.user_set_limit)
        metrics["capability/mmlu_acc"] = acc
        tidy.add("en", "mmlu_acc", acc, n=n)
    if ev.alpacaeval_path:
        scores = capability.alpacaeval_scores(model, tok, Path(ev.alpacaeval_path), cfg.generate, ev.user_set_limit)
        metrics |= scores
        n = int(scores["capability/alpacaeval_n"])
        for k in ("alpacaeval_ref_sim", "alpacaeval_ref_ppl", "alpacaeval_answer_tokens"):
            tidy.add("en", k, scores[f"capability/{k}"], n=n)
    if ev.drift and not cell.is_base:
        metrics |= _drift(cfg, weights, session, unsafe, safe, tidy)
    return metrics


def _drift(cfg: StudyConfig, weights: Weights, session: EvalSession, unsafe: pl.DataFrame, safe: pl.DataFrame,
           tidy: Tidy) -> dict[str, float]:
    """The base model's side from the same copy with the adapter off (a LoRA cell) or from the base's own
    copy (a full fine-tune); the fine-tuned side with the cell's weights."""
    ev = cfg.evaluate
    prompts = [p for _, g in unsafe.group_by("lang", maintain_order=True) for p in g["prompt"].head(ev.n_drift)]
    harmful = unsafe.filter(pl.col("lang") == cfg.eval_langs[0])["prompt"].head(ev.n_drift).to_list()
    harmless = safe.filter(pl.col("lang") == cfg.eval_langs[0])["prompt"].head(ev.n_drift).to_list()
    if not (harmful and harmless):
        return {}
    base_side, tuned_side = session.model(weights.base), session.model(weights.model)
    base, btok = base_side.activate(None), base_side.tok
    direction = drift.refusal_direction(base, btok, harmful, harmless)
    base_means = drift.last_token_means(base, btok, prompts)
    tuned = tuned_side.activate(weights.adapter)
    d = drift.drift_metrics(base_means, drift.last_token_means(tuned, tuned_side.tok, prompts), direction)
    for k, v in d.items():
        tidy.add("all", k, v, n=len(prompts))
    return d
