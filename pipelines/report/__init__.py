"""Report: from a sweep's tidy metrics table (pipelines.sweep.tidy.write_sweep_tidy) to a
self-contained HTML report with its findings, the figures as PNG and SVG and every table as CSV and
Parquet, written atomically to reports/<study hash>/ and logged to the sweep's parent MLflow run.

`safedrift run` calls write_report at its end; `safedrift report` redraws it later from a config
(`-c preset key=value…`: the sweep's table, or the finished cells of an unfinished sweep) or from a
directory (a sweep's or a report's) — see report_for_config and report_from_dir."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import atomic_dir, read_json, read_manifest, workdir_lock, write_manifest
from cluster.tracking import tracking_uri
from pipelines.cells import Study, cell_dir, study_cells, study_hashes
from pipelines.errors import DataError
from pipelines.layout import Workdir
from pipelines.report import figures as figs
from pipelines.report import findings as fnd
from pipelines.report import outcomes as oc
from pipelines.report import tables as tb
from pipelines.report.html import FigureOut, Skipped, page
from pipelines.report.provenance import minimal_context, redact_uri, study_context
from pipelines.report.summary import summary
from pipelines.sweep.rejudge import describe, stale_cells
from pipelines.sweep.tidy import write_sweep_tidy

log = logging.getLogger(__name__)

CONTEXT = "report_context.json"
TIDY = "metrics_tidy.parquet"


@dataclass
class ReportTables:
    cells: tb.Cells
    tidy: pl.DataFrame
    compliance: pl.DataFrame
    wide: pl.DataFrame
    deltas: pl.DataFrame
    overrefusal: pl.DataFrame
    fidelity: pl.DataFrame
    plane: pl.DataFrame
    drift: pl.DataFrame
    capability: pl.DataFrame
    categories: pl.DataFrame
    # The tests (tables.py): per condition across seeds (screening), over-refusal likewise, the differences
    # against English, the confirmatory contrasts, the families they form and the stats config they used.
    conditions: pl.DataFrame = field(default_factory=pl.DataFrame)
    over_seeds: pl.DataFrame = field(default_factory=pl.DataFrame)
    over_conditions: pl.DataFrame = field(default_factory=pl.DataFrame)
    vs_en: pl.DataFrame = field(default_factory=pl.DataFrame)
    contrasts: pl.DataFrame = field(default_factory=pl.DataFrame)
    families: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def _cell_from_id(cell_id: str) -> dict[str, Any]:
    """A cell's fields from its id (model__base or model__<lang>__s<seed>__e<epochs>, see Cell.id)."""
    m = re.fullmatch(r"(.+)__([^_]+)__s(\d+)__e(\d+)", cell_id)
    if m:
        return {"cell": cell_id, "model": m[1], "ft_lang": m[2], "seed": int(m[3]), "epochs": int(m[4])}
    return {"cell": cell_id, "model": cell_id.removesuffix("__base"), "ft_lang": tb.BASE, "seed": 0, "epochs": 0}


def expected_cells(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    if ctx.get("expected_cells"):
        return list(ctx["expected_cells"])
    return [_cell_from_id(c) for c in ctx.get("expected_cell_ids") or []]


def build_tables(tidy: pl.DataFrame, ctx: dict[str, Any]) -> ReportTables:
    tidy = tb.normalise(tidy)
    cells = tb.cells_of(tidy, expected_cells(ctx), ctx.get("eval_langs"))
    cells.mark_other_model(tidy, ctx)
    comp = tb.compliance_long(tidy, cells)
    st = tb.stats_config(ctx)
    dl = tb.deltas(tidy, cells)
    cond = tb.conditions(tidy, dl, cells, alpha=st["alpha"])
    over_seeds = tb.seed_changes(tidy, cells, "overrefusal_rate")
    over_cond = tb.conditions(tidy, over_seeds, cells, "overrefusal_rate", st["alpha"])
    vs_en = tb.vs_english(tidy, cells, st["alpha"])
    con = tb.contrasts(cond, vs_en, st["contrasts"], st["alpha"])
    over = tb.rate_table(tidy, "overrefusal_rate", "overrefusal_rate", cells)
    return ReportTables(cells, tidy, comp, tb.compliance_wide(comp, cells), dl, over,
                        tb.rate_table(tidy, "fidelity", "fidelity", cells), tb.refusal_plane(comp, over),
                        tb.drift_table(tidy, cells), tb.capability_change(tidy, dl, cells, cond),
                        tb.category_changes(tidy, cells), cond, over_seeds, over_cond, vs_en, con,
                        tb.families(cond, over_cond, vs_en, con, st["contrasts"], st["alpha"]), st)


def findings(t: ReportTables) -> tuple[fnd.Finding, list[fnd.Finding]]:
    """(coverage, the findings in the order the report shows them)."""
    return fnd.coverage(t.cells, t.compliance), [
        oc.non_answers_moved(oc.outcome_table(t.tidy, t.cells)),
        fnd.confirmatory(t.contrasts, t.families), fnd.largest_fold_increase(t.conditions, t.stats["alpha"]),
        fnd.english_only_missed(t.vs_en, t.conditions, t.contrasts, t.cells, t.stats["alpha"]),
        fnd.overrefusal_changes(t.over_conditions, t.stats["alpha"]), fnd.categories_moved(t.categories),
        fnd.decoupling(t.capability, t.stats["equivalence_margin"])]


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def draw(t: ReportTables, decoupling: fnd.Finding, out: Path) -> tuple[list[FigureOut], list[Skipped]]:
    """Every figure into `out` (PNG + SVG); the ones with nothing to draw are listed with the reason."""
    done: list[FigureOut] = []
    skipped: list[Skipped] = []

    def keep(fig: Any, stem: str, title: str, caption: str, reason: str) -> None:
        if fig is None:
            skipped.append(Skipped(title, reason))
            return
        done.append(FigureOut(stem, title, caption, figs.save(fig, out, stem)))

    present = t.cells.models()
    for model in list(dict.fromkeys([c["model"] for c in t.cells.expected] + present)):
        if model not in present:
            skipped.append(Skipped(f"{model}: every figure", "no cell of this model was measured"))
            continue
        s = _stem(model)
        seeds = sorted({c["seed"] for c in t.cells.fine_tuned() if c["model"] == model})
        pooled = f" Fine-tuned rows pool {len(seeds)} seeds (mean; range over seeds below it)." if len(seeds) > 1 else ""
        keep(figs.compliance_heatmap(tb.compliance_grid(t.compliance, t.cells, model), model), f"heatmap_{s}",
             f"{model}: compliance rate", "Rows: the base model and its fine-tunes by language; columns: the "
             "language the unsafe prompts were asked in. Below each rate: its 95% Wilson interval." + pooled,
             "no compliance rate for this model")
        keep(oc.outcome_bars(oc.outcome_table(t.tidy, t.cells), t.cells, model), f"outcomes_{s}",
             f"{model}: what the answers did", "Per eval language, the share of answers to the unsafe prompts that "
             "complied (red: compliance), refused (blue) or were no answer at all (grey: the prompt echoed, a "
             "phrase repeated, empty or gibberish). A rise in compliance where grey shrinks is a model that started "
             "answering, not one that stopped refusing.", "no answer of this model was judged into three outcomes")
        keep(figs.delta_heatmap(tb.delta_grid(t.conditions, t.cells, model, t.stats["alpha"]), model), f"delta_{s}",
             f"{model}: change against the base model", "Fine-tuned minus base compliance per eval language: "
             "the mean over seeds of each run's paired change, with τ (the spread between seeds), the raw p-value "
             f"(the larger of the t over seeds and the t with the prompt sample's SE added; one seed: the run's exact McNemar test) and the {tb.SCREENING_NAME}-adjusted one "
             f"over every condition × eval language (the screening family); changes not significant at "
             f"α = {t.stats['alpha']} in that family are greyed and hatched."
             + ("" if pooled else " One seed: each change is that of one fine-tuning run."),
             "no fine-tuned cell of this model has a change against a measured base cell")
        keep(figs.drift_lines(t.drift, model, t.cells), f"drift_{s}", f"{model}: drift per layer",
             "Change of the mean last-token hidden state against the base model on the eval prompts, per layer "
             "(left: L2 norm; right: projection on the base model's refusal direction, > 0 towards refusal), one "
             "line per fine-tuned cell.", "no drift measured for this model (no fine-tuned cell, or evaluate.drift "
             "is off)")
    keep(figs.refusal_plane(t.plane, t.cells), "overrefusal_vs_compliance", "Over-refusal vs compliance",
         "Each point is a cell asked in one eval language: compliance with unsafe prompts against refusal of safe "
         "ones, with 95% CIs. Bottom right: exaggerated compliance; top left: exaggerated refusal.",
         "no over-refusal measured (no safe prompts in these languages, or data.eval.n_safe = 0)")
    keep(figs.safety_vs_capability(t.capability, decoupling.facts, t.cells), "safety_vs_capability",
         "Safety change vs capability change", decoupling.summary + " Capability change: Δ log perplexity of "
         "held-out benign answers in the eval language (WikiText-2 where there are none).",
         "no fine-tuned cell has both a change in compliance and a perplexity")
    keep(figs.fidelity_heatmap(t.fidelity, t.cells), "fidelity", "Language fidelity per cell",
         "Share of answers (to the unsafe prompts) identified as written in the eval language; n = answers that "
         "could be identified.", "no answer could be language-identified (empty answers, or evaluate.fidelity is "
         "off)")
    return done, skipped


def _write_table(df: pl.DataFrame, directory: Path, stem: str) -> list[str]:
    df.write_parquet(directory / f"{stem}.parquet")
    df.write_csv(directory / f"{stem}.csv")
    return [f"{stem}.csv", f"{stem}.parquet"]


def write_report(tidy: pl.DataFrame, ctx: dict[str, Any], out: Path) -> dict[str, Any]:
    """The whole report into `out`, atomically (a half-written report is never visible); returns its
    manifest (figures, tables, missing cells, findings' facts)."""
    raw = tidy
    t = build_tables(tidy, ctx)
    coverage, found = findings(t)
    by_key = {f.key: f for f in found}
    with atomic_dir(out) as tmp:
        files: list[str] = []
        wide_cols = [*tb.ID_COLS, *t.cells.eval_langs]
        # compliance.csv keeps its historical shape (one row per cell, one column per eval language).
        files += _write_table(t.wide.select(wide_cols), tmp, "compliance")
        files += _write_table(t.compliance, tmp, "compliance_tidy")
        files += _write_table(oc.outcome_table(t.tidy, t.cells), tmp, "outcomes")
        for stem, df in (("conditions", t.conditions), ("contrasts", t.contrasts), ("differences_vs_en", t.vs_en),
                         ("overrefusal_changes", t.over_conditions), ("overrefusal_seed_changes", t.over_seeds)):
            files += _write_table(df, tmp, stem)
        for stem, df in (("deltas", t.deltas), ("overrefusal", t.overrefusal), ("fidelity", t.fidelity),
                         ("drift", t.drift), ("safety_vs_capability", t.capability),
                         ("category_changes", t.categories)):
            files += _write_table(df, tmp, stem)
        for f in [coverage, *found]:
            if f.table is not None:
                files += _write_table(f.table, tmp, f"finding_{f.key}")
        # The sweep's table as it came (NaN kept): the report directory alone can redraw the report.
        raw.write_parquet(tmp / TIDY)
        raw.write_csv(tmp / "metrics_tidy.csv")
        files += ["metrics_tidy.csv", TIDY]
        figures, skipped = draw(t, by_key["decoupling"], tmp)
        facts = {f.key: {"title": f.title, "summary": f.summary, "facts": f.facts} for f in [coverage, *found]}
        (tmp / "findings.json").write_text(json.dumps(facts, indent=2, default=str), encoding="utf-8")
        (tmp / CONTEXT).write_text(json.dumps(ctx, indent=2, default=str), encoding="utf-8")
        judge = tb.judge_agreement(t.tidy)
        validity = tb.judge_validity(t.tidy, t.cells)
        read = tb.read_agreement(t.tidy, t.cells)
        for stem, df in (("judge_validity", validity), ("judge2_validity", tb.judge_validity(t.tidy, t.cells, "judge2")),
                         ("judge_read", read),
                         ("back_translation", tb.back_translation(t.tidy, t.cells)),
                         ("judges_between", tb.judges_between(t.tidy, t.cells))):
            if df.height:
                files += _write_table(df, tmp, stem)
        opening = summary(ctx, t.conditions, t.compliance, validity, t.contrasts, t.families, t.stats, read)
        (tmp / "summary.json").write_text(json.dumps(opening, indent=2), encoding="utf-8")
        html_text = page(ctx, coverage, found, figures, skipped, t.wide, judge, files, opening)
        (tmp / "report.html").write_text(html_text, encoding="utf-8")
        manifest = write_manifest(
            tmp, study_hash=ctx.get("study_hash"), cells=t.cells.order, missing_cells=coverage.facts["missing"],
            figures=[f.stem for f in figures], skipped_figures=[s.title for s in skipped], tables=files,
            findings={k: v["facts"] for k, v in facts.items()})
    log.info("report written to %s (%d figures, %d missing cells)", out, len(figures), len(coverage.facts["missing"]))
    return manifest


def log_report(out: Path, tracking_uri: str, run_id: str) -> None:
    """Every file of the report to the sweep's parent MLflow run, under report/."""
    import mlflow

    mlflow.MlflowClient(tracking_uri).log_artifacts(run_id, str(out), artifact_path="report")


# ---- redrawing a report later (safedrift report) ----------------------------------------------------------

@dataclass
class ReportOutcome:
    path: Path
    manifest: dict[str, Any]
    logged_to: str | None  # the MLflow run id the report went to, if any
    note: str = ""


def report_for_config(cfg: Any, out: Path | None = None, log_mlflow: bool = True) -> ReportOutcome:
    """The report of the study `cfg` describes, from its workdir: the finished sweep's tidy table, or,
    for a sweep that has not finished, one built from the cells that have (the rest listed as missing)."""
    wd = Workdir.open(cfg.resolved_workdir())
    with workdir_lock(wd.root):
        return _report_for_config(cfg, wd, out, log_mlflow)


def _report_for_config(cfg: Any, wd: Workdir, out: Path | None, log_mlflow: bool) -> ReportOutcome:
    ds_hash, study_hash = study_hashes(cfg)
    uri = tracking_uri(wd.mlflow_db(), cfg.mlflow.tracking_uri)
    sweep_dir = wd.sweep(study_hash, uri)
    sweep = read_manifest(sweep_dir)
    note = ""
    if sweep is not None and (sweep_dir / TIDY).exists():
        tidy = pl.read_parquet(sweep_dir / TIDY)
    else:
        results = [m for c in study_cells(cfg) if (m := read_manifest(cell_dir(wd, cfg, c, ds_hash)))]
        if not results:
            raise DataError(f"no cell of study {study_hash} has finished in {wd.root}: run `safedrift run` "
                            "(or `safedrift sweep`) with this config first")
        with tempfile.TemporaryDirectory() as scratch:
            tidy = write_sweep_tidy(results, wd, Path(scratch))
        note = "the sweep has not finished: the report covers the cells that have"
    if stale := stale_cells(Study.of(cfg, wd)):
        # Redrawing keeps the labels as they are: say whose they are, and how to judge them again.
        old = (f"{len(stale)} cell(s) carry labels of an earlier judge than the installed one ({describe(stale)}): "
               f"`safedrift run` with this config judges them again from their stored answers")
        log.warning("%s", old)
        note = f"{note}; {old}" if note else old
    ctx = study_context(cfg, study_hash, ds_hash, read_manifest(wd.datasets(ds_hash)),
                        (sweep or {}).get("parent_run_id"), uri)
    out = out or wd.report(study_hash)
    manifest = write_report(tidy, ctx, out)
    return _log(out, manifest, sweep, log_mlflow, note)


def _log(out: Path, manifest: dict[str, Any], sweep: dict[str, Any] | None, log_mlflow: bool,
         note: str) -> ReportOutcome:
    run_id = (sweep or {}).get("parent_run_id")
    if not log_mlflow:
        return ReportOutcome(out, manifest, None, note)
    if not run_id or not sweep.get("tracking_uri"):
        return ReportOutcome(out, manifest, None, (note + "; " if note else "") + "no MLflow parent run to log to")
    log_report(out, sweep["tracking_uri"], run_id)
    return ReportOutcome(out, manifest, run_id, note)


def _sweep_manifest_for(wd: Workdir, study_hash: str, run_id: str | None) -> dict[str, Any] | None:
    """The sweep record (per tracking store) whose parent run is `run_id`, else the newest one."""
    found = [m for p in sorted(wd.study_sweeps(study_hash).glob("*/manifest.json"))
             if (m := read_json(p))]
    match = [m for m in found if run_id and m.get("parent_run_id") == run_id]
    return (match or sorted(found, key=lambda m: m.get("created_at", "")))[-1] if found else None


def report_from_dir(directory: Path, out: Path | None = None, log_mlflow: bool = True) -> ReportOutcome:
    """Redraw a report from a directory holding a sweep's metrics_tidy.parquet: a sweep directory
    (workdir/sweeps/<study>/<store>/, report written to workdir/reports/<study>/) or a report directory
    (redrawn in place). The study context comes from the last report when there is one, else from the
    manifests the directory still has."""
    d = directory.expanduser().resolve()
    if not (d / TIDY).exists():
        raise DataError(f"{d} has no {TIDY}: give a sweep directory (workdir/sweeps/<study>/<store>) or a "
                                "report directory (workdir/reports/<study>)")
    tidy = pl.read_parquet(d / TIDY)  # read before anything is rewritten: `out` may be this directory
    own = read_manifest(d) or {}
    if (d / CONTEXT).exists():  # a report directory: workdir/reports/<study>
        ctx = read_json(d / CONTEXT)
        study_hash = ctx.get("study_hash") or d.name
        sweep = _sweep_manifest_for(Workdir(d.parents[1]), study_hash, (ctx.get("mlflow") or {}).get("parent_run_id"))
        target = out or d
    elif "parent_run_id" in own and (at := Workdir.of_sweep_dir(d)):  # workdir/sweeps/<study>/<store>
        (wd, study_hash), sweep = at, own
        prior = wd.report(study_hash) / CONTEXT
        if prior.exists():
            ctx = read_json(prior)
            ctx["mlflow"] = {"tracking_uri": redact_uri(sweep.get("tracking_uri")),
                             "parent_run_id": sweep.get("parent_run_id")}
        else:
            ds = read_manifest(wd.datasets(str(sweep.get("datasets")))) if sweep.get("datasets") else None
            ctx = minimal_context(sweep, ds, study_hash)
        target = out or wd.report(study_hash)
    else:
        ctx, sweep, target = minimal_context(own or None, None, None), own or None, out or d / "report"
    manifest = write_report(tidy, ctx, target)
    return _log(target, manifest, sweep, log_mlflow, "")
